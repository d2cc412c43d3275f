"""Model families the self-check knows how to build and compare: the monolithic transformers class
(the oracle), the two halves of the split, and how to write a tiny random checkpoint. Only the
Qwen3-VL-MoE default is checked; another family is one more `ModelFamily` entry."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def _write_tiny_moe(path: Path, seed: int) -> Path:
    from hf_qwen3_deepstack.tiny_checkpoint.build import write_tiny_checkpoint

    return write_tiny_checkpoint(path, seed=seed)


@dataclass(frozen=True)
class ModelFamily:
    name: str
    monolithic_class: str  # "module:Class", transformers' own model: the reference
    encoder_class: str  # the vision half (encoder ranks)
    language_class: str  # the language half (language ranks)
    write_tiny_checkpoint: Callable[[Path, int], Path]  # (path, seed) -> a complete checkpoint with processor files
    runtime: bool  # whether `hf-qwen3-deepstack run` serves this family

    def load(self, which: str):
        """The class named by `which` (monolithic, encoder or language)."""
        module, name = getattr(self, f"{which}_class").split(":")
        return getattr(importlib.import_module(module), name)


FAMILIES: dict[str, ModelFamily] = {
    "qwen3-vl-moe": ModelFamily(
        name="qwen3-vl-moe",
        monolithic_class="transformers:Qwen3VLMoeForConditionalGeneration",
        encoder_class="hf_qwen3_deepstack.modeling_qwen3_vl_moe_encoder_only:Qwen3VLMoeEncoderOnly",
        language_class="hf_qwen3_deepstack.modeling_qwen3_moe_deepstack:Qwen3MoeForCausalLMWithDeepStack",
        write_tiny_checkpoint=_write_tiny_moe,
        runtime=True,
    ),
}
