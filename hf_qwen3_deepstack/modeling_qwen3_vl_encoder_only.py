"""Vision half of dense Qwen3-VL as a transformers model: transformers' own `Qwen3VLVisionModel`
plus `encode()` (shared with Qwen3-VL-MoE, see `modeling_encoder_only.py`).
Hub remote code: imports only torch and transformers.
"""

from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel, Qwen3VLPreTrainedModel, Qwen3VLVisionModel

from .checkpoint_view import LoadsOwnShards
from .configuration_qwen3_vl_encoder_only import Qwen3VLEncoderOnlyConfig
from .modeling_encoder_only import EncoderOnlyMixin
from .state_dict_adapter import ENCODER_KEYS_FROM_OTHER_HALF, register_key_tables


class Qwen3VLEncoderOnly(EncoderOnlyMixin, LoadsOwnShards, Qwen3VLPreTrainedModel):
    config_class = Qwen3VLEncoderOnlyConfig
    config: Qwen3VLEncoderOnlyConfig
    _no_split_modules = ["Qwen3VLVisionBlock"]
    _keys_to_ignore_on_load_unexpected = ENCODER_KEYS_FROM_OTHER_HALF

    # transformers' M-RoPE index, reused as is: it only needs config.vision_config.spatial_merge_size
    get_vision_position_ids = Qwen3VLModel.get_vision_position_ids
    get_rope_index = Qwen3VLModel.get_rope_index

    def __init__(self, config: Qwen3VLEncoderOnlyConfig):
        super().__init__(config)
        self.visual = Qwen3VLVisionModel._from_config(config.vision_config)
        self.post_init()


register_key_tables(encoder_class_name=Qwen3VLEncoderOnly.__name__)

__all__ = ["Qwen3VLEncoderOnly"]

# save_pretrained writes auto_map and copies this file + its single-dot imports (Hub remote code)
Qwen3VLEncoderOnlyConfig.register_for_auto_class()
Qwen3VLEncoderOnly.register_for_auto_class("AutoModel")
