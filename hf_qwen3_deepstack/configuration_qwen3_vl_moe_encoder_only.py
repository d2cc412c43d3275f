"""Config of the vision half of Qwen3-VL-MoE (Hub remote code: imports only torch/transformers)."""

from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeConfig, Qwen3VLMoeVisionConfig

from .configuration_encoder_only import EncoderOnlyConfig

FULL_MODEL_TYPE = "qwen3_vl_moe"


class Qwen3VLMoeEncoderOnlyConfig(EncoderOnlyConfig):
    model_type = "qwen3_vl_moe_encoder_only"
    sub_configs_defaults = {"vision_config": Qwen3VLMoeVisionConfig}
    source_configs = {FULL_MODEL_TYPE: (Qwen3VLMoeConfig, "from_full_config")}
    source_names = {FULL_MODEL_TYPE: "Qwen3-VL-MoE"}


__all__ = ["Qwen3VLMoeEncoderOnlyConfig"]
