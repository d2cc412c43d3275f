"""Checkpoint key tables: how each half's parameters are found in the checkpoints it loads.

Hub remote code (imports only torch/transformers). The tables are registered with transformers'
own conversion machinery, so `from_pretrained` reads only matching tensors (safetensors is lazy:
the other half's tensors are never touched) and `save_pretrained` writes the original key names.

| source checkpoint                   | source key                                      | our parameter                         |
| ----------------------------------- | ----------------------------------------------- | ------------------------------------- |
| Qwen3-VL(-MoE) / encoder repo       | model.visual.*                                  | visual.*                              |
| Qwen3-VL(-MoE) / language repo      | model.language_model.*                          | model.*                               |
| Qwen3-VL(-MoE) / language repo      | lm_head.weight                                  | lm_head.weight (or tied to embedding) |
| Qwen3(-MoE) (text)                  | model.*, lm_head.weight                         | same                                  |
| Qwen3-MoE (text), per expert        | mlp.experts.{e}.gate_proj / up_proj .weight     | mlp.experts.gate_up_proj (E, 2I, H)   |
| Qwen3-MoE (text), per expert        | mlp.experts.{e}.down_proj.weight                | mlp.experts.down_proj (E, H, I)       |
| Hub layout (published checkpoints)  | mlp.experts.gate_up_proj (E, H, 2I)             | transposed to (E, 2I, H)              |
| Hub layout (published checkpoints)  | mlp.experts.down_proj (E, I, H)                 | transposed to (E, H, I)               |
| transformers 5 layout               | mlp.experts.gate_up_proj (E, 2I, H) / down (E, H, I) | as is                            |

The expert rows apply to the MoE family only. The layout of fused experts is told apart by shape
(`Transpose(check_dims=True)`), so configs must not have H == 2I (gate_up) / H == I (down_proj):
no released Qwen3-VL-MoE has.
"""

from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import (
    Concatenate,
    MergeModulelist,
    Transpose,
    WeightConverter,
    WeightRenaming,
)

ENCODER_KEYS_FROM_OTHER_HALF = [r"^model\.language_model\.", r"^lm_head\."]
LANGUAGE_KEYS_FROM_OTHER_HALF = [r"^model\.visual\."]


def encoder_key_table() -> list:
    return [WeightRenaming(r"^model\.visual\.", "visual.")]


def language_key_table(fused_experts: bool = True) -> list:
    renaming = [WeightRenaming(r"^model\.language_model\.", "model.")]
    if not fused_experts:
        return renaming
    return [
        *renaming,
        # text Qwen3-MoE: one weight per expert -> fused 3-D tensors
        WeightConverter(
            source_patterns=["mlp.experts.*.gate_proj.weight", "mlp.experts.*.up_proj.weight"],
            target_patterns="mlp.experts.gate_up_proj",
            operations=[MergeModulelist(dim=0), Concatenate(dim=1)],
        ),
        WeightConverter(
            source_patterns="mlp.experts.*.down_proj.weight",
            target_patterns="mlp.experts.down_proj",
            operations=[MergeModulelist(dim=0)],
        ),
        # fused experts in the Hub layout -> transformers layout (no-op when already there)
        WeightConverter(
            source_patterns="mlp.experts.gate_up_proj",
            target_patterns="mlp.experts.gate_up_proj",
            operations=[Transpose(1, 2, check_dims=True)],
        ),
        WeightConverter(
            source_patterns="mlp.experts.down_proj",
            target_patterns="mlp.experts.down_proj",
            operations=[Transpose(1, 2, check_dims=True)],
        ),
    ]


def register_key_tables(encoder_class_name: str | None = None, language_class_name: str | None = None,
                        fused_experts: bool = True) -> None:
    """Register the tables under our class names (custom classes get no built-in conversion).
    `fused_experts`: the language model has MoE experts (Qwen3-VL-MoE), not a dense MLP (Qwen3-VL)."""
    if encoder_class_name:
        register_checkpoint_conversion_mapping(encoder_class_name, encoder_key_table(), overwrite=True)
    if language_class_name:
        register_checkpoint_conversion_mapping(language_class_name, language_key_table(fused_experts), overwrite=True)
