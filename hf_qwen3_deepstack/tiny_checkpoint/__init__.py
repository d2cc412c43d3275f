"""Tiny, deterministic Qwen3-VL(-MoE) / Qwen3(-MoE) checkpoints written by transformers itself:
the embedded default model of the demo and the fixtures of the tests."""

FAMILIES = ("moe", "dense")  # Qwen3-VL-MoE (the default) and dense Qwen3-VL
