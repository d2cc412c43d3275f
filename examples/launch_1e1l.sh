#!/usr/bin/env bash
# 1 encoder rank + 1 language rank on this machine (CPU: gloo; GPUs: NCCL, one GPU per rank).
# Run from the repository root (examples/requests.jsonl names the sample images in examples/images/).
# Without --model the embedded tiny checkpoint is used.
set -euo pipefail
torchrun --standalone --nproc-per-node 2 -m hf_qwen3_deepstack.launch \
    --encoders 1 --lms 1 \
    --requests examples/requests.jsonl --output results.jsonl "$@"
# the same through torch's launcher API, no torchrun needed:
#   hf-qwen3-deepstack run --encoders 1 --lms 1 --requests examples/requests.jsonl --output results.jsonl
