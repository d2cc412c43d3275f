"""Config of the vision half of dense Qwen3-VL (Hub remote code: imports only torch/transformers)."""

from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig, Qwen3VLVisionConfig

from .configuration_encoder_only import EncoderOnlyConfig

FULL_MODEL_TYPE = "qwen3_vl"


class Qwen3VLEncoderOnlyConfig(EncoderOnlyConfig):
    model_type = "qwen3_vl_encoder_only"
    sub_configs_defaults = {"vision_config": Qwen3VLVisionConfig}
    source_configs = {FULL_MODEL_TYPE: (Qwen3VLConfig, "from_full_config")}
    source_names = {FULL_MODEL_TYPE: "Qwen3-VL"}


__all__ = ["Qwen3VLEncoderOnlyConfig"]
