"""Config fields and constructors shared by the language halves of Qwen3-VL and Qwen3-VL-MoE
(Hub remote code: imports only transformers).

A family's config is `class X(<transformers VL text config>, DeepStackTextConfig)`: the text config
comes first so its field defaults win, this class adds the visual bookkeeping of the language side
and builds the config from a full VL checkpoint's config or from a text-only one.
"""

from typing import Any, ClassVar

from transformers.configuration_utils import PreTrainedConfig

from .configuration_sources import ReadsSourceConfigs

# Fields of the text-only Qwen3 config that the Qwen3-VL text decoder shares 1:1.
DENSE_TEXT_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "use_cache", "tie_word_embeddings", "attention_bias", "attention_dropout", "pad_token_id", "bos_token_id",
    "eos_token_id",
)
DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10000.0}


class DeepStackTextConfig(ReadsSourceConfigs, PreTrainedConfig):
    base_config_key = ""
    text_fields: ClassVar[tuple[str, ...]] = DENSE_TEXT_FIELDS  # read from a text-only source config

    image_token_id: int | None = None
    video_token_id: int | None = None
    vision_start_token_id: int | None = None
    vision_end_token_id: int | None = None
    spatial_merge_size: int = 2
    num_deepstack_levels: int = 0  # K: decoder layers 0..K-1 receive deepstack features
    source_model_type: str | None = None

    @classmethod
    def family_fields(cls, source: PreTrainedConfig) -> dict[str, Any]:
        """Fields a family derives from its source config (full or text-only) beyond the shared ones."""
        return {}

    @classmethod
    def from_vl_config(cls, full: PreTrainedConfig) -> "DeepStackTextConfig":
        """Build from a full VL config: its text config plus the placeholder ids."""
        text = full.text_config.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "base_config_key"):
            text.pop(key, None)
        text["tie_word_embeddings"] = full.tie_word_embeddings
        return cls(
            **text,
            image_token_id=full.image_token_id,
            video_token_id=full.video_token_id,
            vision_start_token_id=full.vision_start_token_id,
            vision_end_token_id=full.vision_end_token_id,
            spatial_merge_size=full.vision_config.spatial_merge_size,
            num_deepstack_levels=len(full.vision_config.deepstack_visual_indexes),
            source_model_type=full.model_type,
            **cls.family_fields(full),
        )

    @classmethod
    def from_text_config(cls, text: PreTrainedConfig) -> "DeepStackTextConfig":
        """Build from a text-only config (1-D RoPE is M-RoPE with equal components)."""
        name = cls.source_names.get(text.model_type, text.model_type)
        if getattr(text, "use_sliding_window", False):
            raise ValueError(f"{name} checkpoints with use_sliding_window=True are not supported.")
        fields = {k: getattr(text, k) for k in cls.text_fields if hasattr(text, k)}
        return cls(
            **fields,
            rope_parameters=dict(text.rope_parameters or DEFAULT_ROPE),
            num_deepstack_levels=0,
            source_model_type=text.model_type,
            **cls.family_fields(text),
        )


__all__ = ["DeepStackTextConfig"]
