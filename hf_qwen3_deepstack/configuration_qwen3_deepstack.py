"""Config of the language half of dense Qwen3-VL: a Qwen3 decoder that accepts DeepStack visual
features (Hub remote code: imports only torch/transformers)."""

from transformers.models.qwen3.configuration_qwen3 import Qwen3Config
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig, Qwen3VLTextConfig

from .configuration_deepstack_text import DeepStackTextConfig

VL_MODEL_TYPE = "qwen3_vl"
TEXT_MODEL_TYPE = "qwen3"


class Qwen3DeepStackConfig(Qwen3VLTextConfig, DeepStackTextConfig):
    """Qwen3-VL's text config plus the visual bookkeeping of the language side."""

    model_type = "qwen3_deepstack"
    source_configs = {
        VL_MODEL_TYPE: (Qwen3VLConfig, "from_vl_config"),
        TEXT_MODEL_TYPE: (Qwen3Config, "from_text_config"),
    }
    source_names = {VL_MODEL_TYPE: "Qwen3-VL", TEXT_MODEL_TYPE: "Qwen3"}


__all__ = ["Qwen3DeepStackConfig"]
