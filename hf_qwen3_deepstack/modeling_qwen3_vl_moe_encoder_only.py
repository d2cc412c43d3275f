"""Vision half of Qwen3-VL-MoE as a transformers model: transformers' own `Qwen3VLMoeVisionModel`
plus `encode()` (shared with dense Qwen3-VL, see `modeling_encoder_only.py`).
Hub remote code: imports only torch and transformers.
"""

from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import (
    Qwen3VLMoeModel,
    Qwen3VLMoePreTrainedModel,
    Qwen3VLMoeVisionModel,
)

from .checkpoint_view import LoadsOwnShards
from .configuration_qwen3_vl_moe_encoder_only import Qwen3VLMoeEncoderOnlyConfig
from .modeling_encoder_only import EncoderOnlyMixin, EncoderOnlyOutput
from .state_dict_adapter import ENCODER_KEYS_FROM_OTHER_HALF, register_key_tables

Qwen3VLMoeEncoderOnlyOutput = EncoderOnlyOutput


class Qwen3VLMoeEncoderOnly(EncoderOnlyMixin, LoadsOwnShards, Qwen3VLMoePreTrainedModel):
    config_class = Qwen3VLMoeEncoderOnlyConfig
    config: Qwen3VLMoeEncoderOnlyConfig
    _no_split_modules = ["Qwen3VLMoeVisionBlock"]
    _keys_to_ignore_on_load_unexpected = ENCODER_KEYS_FROM_OTHER_HALF

    # transformers' M-RoPE index, reused as is: it only needs config.vision_config.spatial_merge_size
    get_vision_position_ids = Qwen3VLMoeModel.get_vision_position_ids
    get_rope_index = Qwen3VLMoeModel.get_rope_index

    def __init__(self, config: Qwen3VLMoeEncoderOnlyConfig):
        super().__init__(config)
        self.visual = Qwen3VLMoeVisionModel._from_config(config.vision_config)
        self.post_init()


register_key_tables(encoder_class_name=Qwen3VLMoeEncoderOnly.__name__)

__all__ = ["Qwen3VLMoeEncoderOnly", "Qwen3VLMoeEncoderOnlyOutput"]

# save_pretrained writes auto_map and copies this file + its single-dot imports (Hub remote code)
Qwen3VLMoeEncoderOnlyConfig.register_for_auto_class()
Qwen3VLMoeEncoderOnly.register_for_auto_class("AutoModel")
