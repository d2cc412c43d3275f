"""hf-qwen3-deepstack: Qwen3-VL (dense and MoE) split into a vision encoder and a DeepStack language model.

    enc = Qwen3VLMoeEncoderOnly.from_pretrained(full_checkpoint)          # vision tensors only
    lm = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(full_checkpoint)  # language tensors only
    # dense Qwen3-VL: Qwen3VLEncoderOnly and Qwen3ForCausalLMWithDeepStack, the same way
    out = enc.encode(**processor.apply_chat_template(messages, ..., return_dict=True, return_tensors="pt"))
    tokens = lm.generate(**out.lm_inputs(), max_new_tokens=64)

Names are imported lazily: `import hf_qwen3_deepstack.transfer` (or the CLI) does not pay for
importing transformers' model code.
"""

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "EncoderOnlyOutput": "modeling_encoder_only",
    "EncoderOutput": "encoder_output",
    "Qwen3DeepStackConfig": "configuration_qwen3_deepstack",
    "Qwen3ForCausalLMWithDeepStack": "modeling_qwen3_deepstack",
    "Qwen3ModelWithDeepStack": "modeling_qwen3_deepstack",
    "Qwen3VLEncoderOnly": "modeling_qwen3_vl_encoder_only",
    "Qwen3VLEncoderOnlyConfig": "configuration_qwen3_vl_encoder_only",
    "Qwen3MoeDeepStackConfig": "configuration_qwen3_moe_deepstack",
    "Qwen3VLMoeEncoderOnlyConfig": "configuration_qwen3_vl_moe_encoder_only",
    "Qwen3MoeForCausalLMWithDeepStack": "modeling_qwen3_moe_deepstack",
    "Qwen3MoeModelWithDeepStack": "modeling_qwen3_moe_deepstack",
    "Qwen3VLMoeEncoderOnly": "modeling_qwen3_vl_moe_encoder_only",
    "Qwen3VLMoeEncoderOnlyOutput": "modeling_qwen3_vl_moe_encoder_only",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .configuration_qwen3_deepstack import Qwen3DeepStackConfig
    from .configuration_qwen3_vl_encoder_only import Qwen3VLEncoderOnlyConfig
    from .modeling_qwen3_deepstack import Qwen3ForCausalLMWithDeepStack, Qwen3ModelWithDeepStack
    from .modeling_qwen3_vl_encoder_only import Qwen3VLEncoderOnly
    from .configuration_qwen3_moe_deepstack import Qwen3MoeDeepStackConfig
    from .configuration_qwen3_vl_moe_encoder_only import Qwen3VLMoeEncoderOnlyConfig
    from .encoder_output import EncoderOutput
    from .modeling_encoder_only import EncoderOnlyOutput
    from .modeling_qwen3_moe_deepstack import Qwen3MoeForCausalLMWithDeepStack, Qwen3MoeModelWithDeepStack
    from .modeling_qwen3_vl_moe_encoder_only import Qwen3VLMoeEncoderOnly, Qwen3VLMoeEncoderOnlyOutput


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hf_qwen3_deepstack' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
