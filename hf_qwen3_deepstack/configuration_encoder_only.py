"""Config shared by the vision halves of Qwen3-VL and Qwen3-VL-MoE (Hub remote code: imports only
transformers). A family's config sets `model_type`, its vision sub-config and its source checkpoint."""

from transformers.configuration_utils import PreTrainedConfig

from .configuration_sources import ReadsSourceConfigs


class EncoderOnlyConfig(ReadsSourceConfigs, PreTrainedConfig):
    """The vision tower of a Qwen3-VL checkpoint plus what the encoder side needs to build
    language-model inputs: placeholder token ids (for M-RoPE and placeholder checks)."""

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
    def from_full_config(cls, full: PreTrainedConfig) -> "EncoderOnlyConfig":
        """Build from the monolithic model's config (`Qwen3VLConfig` / `Qwen3VLMoeConfig`)."""
        if full.model_type not in cls.source_configs:
            (expected,) = cls.source_configs
            raise ValueError(
                f"{cls.__name__.removesuffix('Config')} needs a {cls.source_names[expected]} checkpoint "
                f"(model_type '{expected}'), got model_type '{full.model_type}'."
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


__all__ = ["EncoderOnlyConfig"]
