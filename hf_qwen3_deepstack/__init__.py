"""hf-qwen3-deepstack: Qwen3-VL-MoE split into a vision encoder and a DeepStack MoE language model.

    enc = Qwen3VLMoeEncoderOnly.from_pretrained(full_checkpoint)          # vision tensors only
    lm = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(full_checkpoint)  # language tensors only
    out = enc.encode(**processor.apply_chat_template(messages, ..., return_dict=True, return_tensors="pt"))
    tokens = lm.generate(**out.lm_inputs(), max_new_tokens=64)
"""

from .configuration_qwen3_moe_deepstack import Qwen3MoeDeepStackConfig
from .configuration_qwen3_vl_moe_encoder_only import Qwen3VLMoeEncoderOnlyConfig
from .encoder_output import EncoderOutput
from .modeling_qwen3_moe_deepstack import Qwen3MoeForCausalLMWithDeepStack, Qwen3MoeModelWithDeepStack
from .modeling_qwen3_vl_moe_encoder_only import Qwen3VLMoeEncoderOnly, Qwen3VLMoeEncoderOnlyOutput

__all__ = [
    "EncoderOutput",
    "Qwen3MoeDeepStackConfig",
    "Qwen3MoeForCausalLMWithDeepStack",
    "Qwen3MoeModelWithDeepStack",
    "Qwen3VLMoeEncoderOnly",
    "Qwen3VLMoeEncoderOnlyConfig",
    "Qwen3VLMoeEncoderOnlyOutput",
]
__version__ = "0.1.0"
