"""Config of the language half: a Qwen3-MoE decoder that accepts DeepStack visual features
(Hub remote code: imports only torch/transformers)."""

from transformers.configuration_utils import PreTrainedConfig
from transformers.models.qwen3_moe.configuration_qwen3_moe import Qwen3MoeConfig
from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeConfig, Qwen3VLMoeTextConfig

from .configuration_sources import ReadsSourceConfigs

VL_MODEL_TYPE = "qwen3_vl_moe"
TEXT_MODEL_TYPE = "qwen3_moe"

# Fields of Qwen3-MoE's config that the Qwen3-VL-MoE text decoder shares 1:1.
_SHARED_TEXT_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "use_cache", "tie_word_embeddings", "attention_bias", "attention_dropout", "decoder_sparse_step",
    "moe_intermediate_size", "num_experts_per_tok", "num_experts", "output_router_logits",
    "router_aux_loss_coef", "mlp_only_layers", "pad_token_id", "bos_token_id", "eos_token_id", "head_dim",
)


class Qwen3MoeDeepStackConfig(ReadsSourceConfigs, Qwen3VLMoeTextConfig):
    """Qwen3-VL-MoE's text config plus the visual bookkeeping of the language side."""

    model_type = "qwen3_moe_deepstack"
    base_config_key = ""
    source_configs = {
        VL_MODEL_TYPE: (Qwen3VLMoeConfig, "from_vl_config"),
        TEXT_MODEL_TYPE: (Qwen3MoeConfig, "from_text_config"),
    }
    source_names = {VL_MODEL_TYPE: "Qwen3-VL-MoE", TEXT_MODEL_TYPE: "Qwen3-MoE"}

    image_token_id: int | None = None
    video_token_id: int | None = None
    vision_start_token_id: int | None = None
    vision_end_token_id: int | None = None
    spatial_merge_size: int = 2
    num_deepstack_levels: int = 0  # K: decoder layers 0..K-1 receive deepstack features
    norm_topk_prob: bool = True  # Qwen3-VL-MoE always renormalises top-k router weights
    source_model_type: str | None = None

    @classmethod
    def from_vl_config(cls, full: PreTrainedConfig) -> "Qwen3MoeDeepStackConfig":
        """Build from a `Qwen3VLMoeConfig`: its text config plus the placeholder ids."""
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
            norm_topk_prob=True,
            source_model_type=VL_MODEL_TYPE,
        )

    @classmethod
    def from_text_config(cls, text: PreTrainedConfig) -> "Qwen3MoeDeepStackConfig":
        """Build from a text-only `Qwen3MoeConfig` (1-D RoPE is M-RoPE with equal components)."""
        if getattr(text, "use_sliding_window", False):
            raise ValueError("Qwen3-MoE checkpoints with use_sliding_window=True are not supported.")
        fields = {k: getattr(text, k) for k in _SHARED_TEXT_FIELDS if hasattr(text, k)}
        rope = dict(text.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
        return cls(
            **fields,
            rope_parameters=rope,
            norm_topk_prob=text.norm_topk_prob,
            num_deepstack_levels=0,
            source_model_type=TEXT_MODEL_TYPE,
        )


__all__ = ["Qwen3MoeDeepStackConfig"]
