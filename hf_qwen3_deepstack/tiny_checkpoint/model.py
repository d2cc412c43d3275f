"""Tiny random Qwen3-VL(-MoE) and Qwen3(-MoE) checkpoints, written by transformers itself.

Two families: "moe" (Qwen3-VL-MoE, the default) and "dense" (Qwen3-VL). Dimensions are chosen so
layout bugs cannot hide: H=64 != 2*I=96 (moe_intermediate 48); the dense MLP has I=80 (H != I,
H != 2I); K=3 deepstack levels on a 4-layer decoder (layer 3 sees no deepstack), GQA (4 heads,
2 kv heads).
"""

from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)

from . import FAMILIES
from .special_tokens import (
    EOS_TOKEN_ID,
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    TINY_VOCAB_SIZE,
    VIDEO_TOKEN_ID,
    VISION_END_TOKEN_ID,
    VISION_START_TOKEN_ID,
)

ExpertLayout = Literal["hub", "transformers"]
Family = Literal["moe", "dense"]
# Fused expert tensors: transformers 5 holds (E, 2I, H) / (E, H, I); Hub checkpoints store the
# transpose of the last two dims, (E, H, 2I) / (E, I, H).
FUSED_EXPERT_SUFFIXES = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")

TINY_TEXT = dict(
    vocab_size=TINY_VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=80,
    moe_intermediate_size=48,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=4096,
    initializer_range=0.08,
    pad_token_id=PAD_TOKEN_ID,
    eos_token_id=EOS_TOKEN_ID,
)
# The dense decoder: Qwen3's fields of TINY_TEXT, without the experts.
TINY_DENSE_TEXT = {k: v for k, v in TINY_TEXT.items()
                   if k not in ("moe_intermediate_size", "num_experts", "num_experts_per_tok")}
TINY_VISION = dict(
    depth=4,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    patch_size=16,
    temporal_patch_size=2,
    spatial_merge_size=2,
    out_hidden_size=64,
    num_position_embeddings=64,
    deepstack_visual_indexes=[0, 1, 2],
    initializer_range=0.08,
)


def tiny_vl_config(tie_word_embeddings: bool = False, family: Family = "moe",
                   **text_overrides) -> Qwen3VLMoeConfig | Qwen3VLConfig:
    text = {
        **(TINY_TEXT if family == "moe" else TINY_DENSE_TEXT),
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                            "mrope_interleaved": True},
        **text_overrides,
    }
    config_class = Qwen3VLMoeConfig if _check_family(family) == "moe" else Qwen3VLConfig
    return config_class(
        text_config=text,
        vision_config=dict(TINY_VISION),
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID,
        vision_start_token_id=VISION_START_TOKEN_ID,
        vision_end_token_id=VISION_END_TOKEN_ID,
        tie_word_embeddings=tie_word_embeddings,
    )


def tiny_text_config(family: Family = "moe", **overrides) -> Qwen3MoeConfig | Qwen3Config:
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    if _check_family(family) == "moe":
        return Qwen3MoeConfig(**{**TINY_TEXT, "norm_topk_prob": False, "rope_parameters": rope, **overrides})
    return Qwen3Config(**{**TINY_DENSE_TEXT, "rope_parameters": rope, **overrides})


def build_tiny_vl_model(seed: int = 0, tie_word_embeddings: bool = False, family: Family = "moe", **text_overrides):
    torch.manual_seed(seed)
    model_class = Qwen3VLMoeForConditionalGeneration if family == "moe" else Qwen3VLForConditionalGeneration
    return model_class(tiny_vl_config(tie_word_embeddings, family, **text_overrides)).eval()


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    return family


def write_tiny_vl_checkpoint(
    path: str | Path,
    seed: int = 0,
    *,
    family: Family = "moe",
    expert_layout: ExpertLayout = "hub",
    max_shard_size: str | int | None = None,
    tie_word_embeddings: bool = False,
) -> Path:
    """Write a tiny Qwen3-VL-MoE (`family="moe"`) or Qwen3-VL (`"dense"`) checkpoint (weights +
    config only) to `path`.

    `expert_layout="hub"` stores fused experts as published checkpoints do; "transformers" as
    transformers 5 writes them (MoE only). `max_shard_size` (e.g. "200KB") writes several shards + index.
    """
    path = Path(path)
    model = build_tiny_vl_model(seed, tie_word_embeddings, _check_family(family))
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(path, **kwargs)
    if family == "dense":
        return path
    if expert_layout == "hub":
        transpose_fused_experts(path)
    elif expert_layout != "transformers":
        raise ValueError(f"expert_layout must be 'hub' or 'transformers', got {expert_layout!r}")
    return path


def write_tiny_text_checkpoint(path: str | Path, seed: int = 0, family: Family = "moe", **overrides) -> Path:
    """Write a tiny text-only Qwen3-MoE checkpoint (per-expert weights, as on the Hub), or a Qwen3
    one for `family="dense"`."""
    path = Path(path)
    torch.manual_seed(seed)
    model_class = Qwen3MoeForCausalLM if _check_family(family) == "moe" else Qwen3ForCausalLM
    model_class(tiny_text_config(family, **overrides)).save_pretrained(path)
    return path


def transpose_fused_experts(path: Path) -> None:
    """Rewrite every safetensors file in `path` with fused experts transposed (last two dims)."""
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        for key, tensor in tensors.items():
            if key.endswith(FUSED_EXPERT_SUFFIXES):
                tensors[key] = tensor.transpose(1, 2).contiguous()
        save_file(tensors, file, metadata=metadata or {"format": "pt"})
