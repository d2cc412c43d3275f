#!/usr/bin/env bash
# Two nodes x 8 GPUs = 16 ranks. Global ranks are contiguous per node (node n holds ranks
# 8n..8n+7), so with --encoders 4 the first 4 GPUs of the first node encode and the other 12
# GPUs are language replicas. With the c10d rendezvous below, which node is "first" is decided
# by the rendezvous (join order); for a fixed order use static rendezvous instead:
#   torchrun --nnodes 2 --node-rank $NODE_RANK --master-addr HOST0 --master-port 29500 ...
# Run this on every node with the same MASTER (host:port reachable from all nodes) and JOB id. Every node needs the checkpoint (or Hub access / the same HF cache) and
# the requests file at the same path; the output is written by the language leader (global rank
# E, here on node 0). If a node dies, torchrun on that node stops its ranks; ranks on the other
# nodes stop at their next wait after at most --timeout seconds (default 1800: lower it for
# faster failure detection, but keep it above the slowest model load and the longest request).
set -euo pipefail
: "${MASTER:?set MASTER=host:port of the rendezvous host}"
MODEL=${MODEL:-Qwen/Qwen3-VL-30B-A3B-Instruct}
torchrun --nnodes "${NNODES:-2}" --nproc-per-node "${GPUS_PER_NODE:-8}" \
    --rdzv-backend c10d --rdzv-endpoint "$MASTER" --rdzv-id "${JOB:-qwen3vl-split}" --max-restarts 0 \
    -m hf_qwen3_deepstack.launch \
    --model "$MODEL" --dtype bfloat16 --encoders "${ENCODERS:-4}" --lms "${LMS:-12}" \
    --requests "${REQUESTS:-requests.jsonl}" --output "${OUTPUT:-results.jsonl}" --timeout 600 "$@"
