"""Publishable Hub repos: split a Qwen3-VL(-MoE) checkpoint into an encoder repo and a language
repo that load with plain transformers (`trust_remote_code=True`), render their model cards,
and push them."""

from .interruption import Interrupted
from .split import SplitError, SplitResult, split_checkpoint

__all__ = ["Interrupted", "SplitError", "SplitResult", "split_checkpoint"]
