"""Language half of Qwen3-VL-MoE: the Qwen3-MoE decoder with DeepStack inputs, as a transformers model.

Defined as the difference from transformers' `Qwen3VLMoeTextModel`: the DeepStack inputs and the
causal-LM head shared with dense Qwen3-VL (`modeling_deepstack_text.py`), the router of text Qwen3-MoE
checkpoints that do not renormalise top-k weights, and the router's auxiliary loss. Loads from the
full Qwen3-VL-MoE checkpoint or a text Qwen3-MoE one. Hub remote code: imports only torch and
transformers.
"""

import torch
from torch import nn
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import MoeCausalLMOutputWithPast
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter
from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import (
    Qwen3VLMoePreTrainedModel,
    Qwen3VLMoeTextModel,
    Qwen3VLMoeTextSparseMoeBlock,
    load_balancing_loss_func,
)

from .checkpoint_view import LoadsOwnShards
from .configuration_qwen3_moe_deepstack import Qwen3MoeDeepStackConfig
from .modeling_deepstack_text import DeepStackCausalLMMixin, DeepStackTextModelMixin
from .state_dict_adapter import LANGUAGE_KEYS_FROM_OTHER_HALF, register_key_tables


class Qwen3MoeDeepStackPreTrainedModel(Qwen3VLMoePreTrainedModel):
    config_class = Qwen3MoeDeepStackConfig
    config: Qwen3MoeDeepStackConfig
    base_model_prefix = "model"
    input_modalities = ("text",)
    _keys_to_ignore_on_load_unexpected = LANGUAGE_KEYS_FROM_OTHER_HALF

    @classmethod
    def _can_set_experts_implementation(cls) -> bool:
        return True  # the experts are transformers' own (decorated) modules: same kernels as the reference

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, Qwen3MoeTopKRouter):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)


class Qwen3MoeModelWithDeepStack(DeepStackTextModelMixin, Qwen3MoeDeepStackPreTrainedModel, Qwen3VLMoeTextModel):
    """`Qwen3VLMoeTextModel` that takes the encoder's visual rows instead of pre-merged embeddings."""

    def __init__(self, config: Qwen3MoeDeepStackConfig):
        Qwen3VLMoeTextModel.__init__(self, config)
        if not config.norm_topk_prob:  # text Qwen3-MoE checkpoints may not renormalise top-k weights
            for layer in self.layers:
                if isinstance(layer.mlp, Qwen3VLMoeTextSparseMoeBlock):
                    layer.mlp.gate = Qwen3MoeTopKRouter(config)
            self.post_init()


class Qwen3MoeForCausalLMWithDeepStack(
    DeepStackCausalLMMixin, LoadsOwnShards, Qwen3MoeDeepStackPreTrainedModel, GenerationMixin
):
    def __init__(self, config: Qwen3MoeDeepStackConfig):
        super().__init__(config)
        self.model = Qwen3MoeModelWithDeepStack(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def causal_lm_output(self, outputs, logits, loss, attention_mask) -> MoeCausalLMOutputWithPast:
        aux_loss = None
        if outputs.router_logits:  # collected when output_router_logits (argument or config) is set
            aux_loss = load_balancing_loss_func(
                outputs.router_logits, self.config.num_experts, self.config.num_experts_per_tok, attention_mask
            )
            if loss is not None:
                loss = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)
        return MoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits,
        )


register_key_tables(language_class_name=Qwen3MoeForCausalLMWithDeepStack.__name__)

__all__ = ["Qwen3MoeForCausalLMWithDeepStack", "Qwen3MoeModelWithDeepStack", "Qwen3MoeDeepStackPreTrainedModel"]

# save_pretrained writes auto_map and copies this file + its single-dot imports (Hub remote code)
Qwen3MoeDeepStackConfig.register_for_auto_class()
Qwen3MoeForCausalLMWithDeepStack.register_for_auto_class("AutoModelForCausalLM")
