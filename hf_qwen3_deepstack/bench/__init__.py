"""Benchmarks: `python -m hf_qwen3_deepstack.bench transfer|pipeline` (or `hf-qwen3-deepstack bench ...`)."""
