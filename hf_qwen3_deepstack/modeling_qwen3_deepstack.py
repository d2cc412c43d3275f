"""Language half of dense Qwen3-VL: the Qwen3 decoder with DeepStack inputs, as a transformers model.

Defined as the difference from transformers' `Qwen3VLTextModel`: the DeepStack inputs and the
causal-LM head shared with Qwen3-VL-MoE (`modeling_deepstack_text.py`). Loads from the full Qwen3-VL
checkpoint or a text Qwen3 one. Hub remote code: imports only torch and transformers.
"""

from torch import nn
from transformers.generation import GenerationMixin
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLPreTrainedModel, Qwen3VLTextModel

from .checkpoint_view import LoadsOwnShards
from .configuration_qwen3_deepstack import Qwen3DeepStackConfig
from .modeling_deepstack_text import DeepStackCausalLMMixin, DeepStackTextModelMixin
from .state_dict_adapter import LANGUAGE_KEYS_FROM_OTHER_HALF, register_key_tables


class Qwen3DeepStackPreTrainedModel(Qwen3VLPreTrainedModel):
    config_class = Qwen3DeepStackConfig
    config: Qwen3DeepStackConfig
    base_model_prefix = "model"
    input_modalities = ("text",)
    _keys_to_ignore_on_load_unexpected = LANGUAGE_KEYS_FROM_OTHER_HALF


class Qwen3ModelWithDeepStack(DeepStackTextModelMixin, Qwen3DeepStackPreTrainedModel, Qwen3VLTextModel):
    """`Qwen3VLTextModel` that takes the encoder's visual rows instead of pre-merged embeddings."""


class Qwen3ForCausalLMWithDeepStack(DeepStackCausalLMMixin, LoadsOwnShards, Qwen3DeepStackPreTrainedModel,
                                    GenerationMixin):
    def __init__(self, config: Qwen3DeepStackConfig):
        super().__init__(config)
        self.model = Qwen3ModelWithDeepStack(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


register_key_tables(language_class_name=Qwen3ForCausalLMWithDeepStack.__name__, fused_experts=False)

__all__ = ["Qwen3ForCausalLMWithDeepStack", "Qwen3ModelWithDeepStack", "Qwen3DeepStackPreTrainedModel"]

# save_pretrained writes auto_map and copies this file + its single-dot imports (Hub remote code)
Qwen3DeepStackConfig.register_for_auto_class()
Qwen3ForCausalLMWithDeepStack.register_for_auto_class("AutoModelForCausalLM")
