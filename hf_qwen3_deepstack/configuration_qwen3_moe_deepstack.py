"""Config of the language half of Qwen3-VL-MoE: a Qwen3-MoE decoder that accepts DeepStack visual
features (Hub remote code: imports only torch/transformers)."""

from typing import Any

from transformers.configuration_utils import PreTrainedConfig
from transformers.models.qwen3_moe.configuration_qwen3_moe import Qwen3MoeConfig
from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeConfig, Qwen3VLMoeTextConfig

from .configuration_deepstack_text import DENSE_TEXT_FIELDS, DeepStackTextConfig

VL_MODEL_TYPE = "qwen3_vl_moe"
TEXT_MODEL_TYPE = "qwen3_moe"


class Qwen3MoeDeepStackConfig(Qwen3VLMoeTextConfig, DeepStackTextConfig):
    """Qwen3-VL-MoE's text config plus the visual bookkeeping of the language side."""

    model_type = "qwen3_moe_deepstack"
    source_configs = {
        VL_MODEL_TYPE: (Qwen3VLMoeConfig, "from_vl_config"),
        TEXT_MODEL_TYPE: (Qwen3MoeConfig, "from_text_config"),
    }
    source_names = {VL_MODEL_TYPE: "Qwen3-VL-MoE", TEXT_MODEL_TYPE: "Qwen3-MoE"}
    text_fields = DENSE_TEXT_FIELDS + (
        "decoder_sparse_step", "moe_intermediate_size", "num_experts_per_tok", "num_experts", "output_router_logits",
        "router_aux_loss_coef", "mlp_only_layers",
    )

    norm_topk_prob: bool = True  # Qwen3-VL-MoE always renormalises top-k router weights

    @classmethod
    def family_fields(cls, source: PreTrainedConfig) -> dict[str, Any]:
        return {"norm_topk_prob": True if source.model_type == VL_MODEL_TYPE else source.norm_topk_prob}


__all__ = ["Qwen3MoeDeepStackConfig"]
