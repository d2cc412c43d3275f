"""Config of the vision half of Qwen3-VL-MoE (Hub remote code: imports only torch/transformers)."""

from transformers.configuration_utils import PreTrainedConfig
from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import (
    Qwen3VLMoeConfig,
    Qwen3VLMoeVisionConfig,
)

from .configuration_sources import ReadsSourceConfigs

FULL_MODEL_TYPE = "qwen3_vl_moe"


class Qwen3VLMoeEncoderOnlyConfig(ReadsSourceConfigs, PreTrainedConfig):
    """The vision tower of a Qwen3-VL-MoE checkpoint plus what the encoder side needs to build
    language-model inputs: placeholder token ids (for M-RoPE and placeholder checks)."""

    model_type = "qwen3_vl_moe_encoder_only"
    sub_configs_defaults = {"vision_config": Qwen3VLMoeVisionConfig}
    source_configs = {FULL_MODEL_TYPE: (Qwen3VLMoeConfig, "from_full_config")}
    source_names = {FULL_MODEL_TYPE: "Qwen3-VL-MoE"}

    vision_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    text_hidden_size: int | None = None  # width of visual embeddings == language hidden size
    source_model_type: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.text_hidden_size is None:
            self.text_hidden_size = self.vision_config.out_hidden_size

    @property
    def spatial_merge_size(self) -> int:
        return self.vision_config.spatial_merge_size

    @property
    def num_deepstack_levels(self) -> int:
        return len(self.vision_config.deepstack_visual_indexes)

    @classmethod
    def from_full_config(cls, full: PreTrainedConfig) -> "Qwen3VLMoeEncoderOnlyConfig":
        """Build from a `Qwen3VLMoeConfig` (the monolithic model's config)."""
        if full.model_type != FULL_MODEL_TYPE:
            raise ValueError(
                f"Qwen3VLMoeEncoderOnly needs a Qwen3-VL-MoE checkpoint (model_type '{FULL_MODEL_TYPE}'), "
                f"got model_type '{full.model_type}'."
            )
        return cls(
            vision_config=full.vision_config.to_dict(),
            image_token_id=full.image_token_id,
            video_token_id=full.video_token_id,
            vision_start_token_id=full.vision_start_token_id,
            vision_end_token_id=full.vision_end_token_id,
            text_hidden_size=full.text_config.hidden_size,
            source_model_type=full.model_type,
        )


__all__ = ["Qwen3VLMoeEncoderOnlyConfig"]
