"""Two-group torch.distributed runtime: E encoder ranks + L language ranks.

Entry points: `torchrun --nproc-per-node E+L -m hf_qwen3_deepstack.launch ...` and
`hf-qwen3-deepstack run ...` (same, started through torch's launcher API).
"""
