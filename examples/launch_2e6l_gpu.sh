#!/usr/bin/env bash
# One 8-GPU node serving a real checkpoint: 2 encoder ranks (GPUs 0-1) + 6 language replicas
# (GPUs 2-7). Each rank uses cuda:LOCAL_RANK; the backend is NCCL. A language replica holds
# the whole language model, so it must fit one GPU (Qwen3-VL-30B-A3B in bf16 does on 80 GB).
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen3-VL-30B-A3B-Instruct}
torchrun --standalone --nproc-per-node 8 -m hf_qwen3_deepstack.launch \
    --model "$MODEL" --dtype bfloat16 --encoders 2 --lms 6 \
    --requests "${REQUESTS:-requests.jsonl}" --output "${OUTPUT:-results.jsonl}" \
    --max-new-tokens 256 --capacity-tokens 8192 "$@"
