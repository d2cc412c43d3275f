"""The two model families we split, and how a checkpoint's `model_type` picks one.

| family | full checkpoint (`model_type`) | text-only source | encoder repo                | language repo         |
| ------ | ------------------------------ | ---------------- | --------------------------- | --------------------- |
| moe    | Qwen3-VL-MoE (`qwen3_vl_moe`)  | `qwen3_moe`      | `qwen3_vl_moe_encoder_only` | `qwen3_moe_deepstack` |
| dense  | Qwen3-VL (`qwen3_vl`)          | `qwen3`          | `qwen3_vl_encoder_only`     | `qwen3_deepstack`     |

Classes are imported on first use, so reading this table costs no model imports.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Half = Literal["encoder", "lm"]


def _import(dotted: str) -> type:
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ModelFamily:
    name: str  # "moe" | "dense"
    display_name: str  # for messages and model cards
    vl_model_type: str  # the full (monolithic) checkpoint
    text_model_type: str  # a text-only checkpoint (loads into the language half)
    encoder_model_type: str  # our encoder repo's config
    lm_model_type: str  # our language repo's config
    encoder_path: str  # "module.Class" of the encoder, in this package
    encoder_config_path: str
    lm_path: str
    lm_config_path: str
    monolithic_path: str  # transformers' own full model
    has_experts: bool

    def encoder_class(self) -> type:
        return _import(self.encoder_path)

    def encoder_config_class(self) -> type:
        return _import(self.encoder_config_path)

    def lm_class(self) -> type:
        return _import(self.lm_path)

    def lm_config_class(self) -> type:
        return _import(self.lm_config_path)

    def monolithic_class(self) -> type:
        return _import(self.monolithic_path)

    def model_types(self, half: Half | None = None) -> tuple[str, ...]:
        """The `model_type`s a half (or, with None, any half or the full model) loads from."""
        encoder = (self.vl_model_type, self.encoder_model_type)
        lm = (self.vl_model_type, self.text_model_type, self.lm_model_type)
        return {"encoder": encoder, "lm": lm, None: tuple(dict.fromkeys(encoder + lm))}[half]


_PKG = "hf_qwen3_deepstack"
FAMILIES: dict[str, ModelFamily] = {
    "moe": ModelFamily(
        name="moe",
        display_name="Qwen3-VL-MoE",
        vl_model_type="qwen3_vl_moe",
        text_model_type="qwen3_moe",
        encoder_model_type="qwen3_vl_moe_encoder_only",
        lm_model_type="qwen3_moe_deepstack",
        encoder_path=f"{_PKG}.modeling_qwen3_vl_moe_encoder_only.Qwen3VLMoeEncoderOnly",
        encoder_config_path=f"{_PKG}.configuration_qwen3_vl_moe_encoder_only.Qwen3VLMoeEncoderOnlyConfig",
        lm_path=f"{_PKG}.modeling_qwen3_moe_deepstack.Qwen3MoeForCausalLMWithDeepStack",
        lm_config_path=f"{_PKG}.configuration_qwen3_moe_deepstack.Qwen3MoeDeepStackConfig",
        monolithic_path="transformers.Qwen3VLMoeForConditionalGeneration",
        has_experts=True,
    ),
    "dense": ModelFamily(
        name="dense",
        display_name="Qwen3-VL",
        vl_model_type="qwen3_vl",
        text_model_type="qwen3",
        encoder_model_type="qwen3_vl_encoder_only",
        lm_model_type="qwen3_deepstack",
        encoder_path=f"{_PKG}.modeling_qwen3_vl_encoder_only.Qwen3VLEncoderOnly",
        encoder_config_path=f"{_PKG}.configuration_qwen3_vl_encoder_only.Qwen3VLEncoderOnlyConfig",
        lm_path=f"{_PKG}.modeling_qwen3_deepstack.Qwen3ForCausalLMWithDeepStack",
        lm_config_path=f"{_PKG}.configuration_qwen3_deepstack.Qwen3DeepStackConfig",
        monolithic_path="transformers.Qwen3VLForConditionalGeneration",
        has_experts=False,
    ),
}


def family_for_model_type(model_type: str | None, half: Half | None = None,
                          where: str = "the checkpoint") -> ModelFamily:
    """The family whose `half` loads from a config of `model_type`; ValueError naming the accepted ones."""
    for family in FAMILIES.values():
        if model_type in family.model_types(half):
            return family
    what = {"encoder": "an encoder", "lm": "a language model", None: "a model"}[half]
    accepted = ", ".join(f"'{t}'" for f in FAMILIES.values() for t in f.model_types(half))
    raise ValueError(f"{where} has model_type {model_type!r}; {what} loads from model_type {accepted}.")


def read_model_type(model: str | os.PathLike) -> str | None:
    """`model_type` of a local checkpoint folder's or a Hub id's config.json (no class is built)."""
    path = Path(model).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{model} has no config.json; expected a checkpoint folder") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{config_file} is not a readable JSON config: {e}") from e
        if not isinstance(config, dict):
            raise ValueError(f"{config_file} must hold a JSON object, got {type(config).__name__}")
        return config.get("model_type")
    if str(model).startswith(("/", "./", "../", "~")) or path.exists():
        raise FileNotFoundError(f"checkpoint folder {model} does not exist")
    from transformers import PreTrainedConfig

    config, _ = PreTrainedConfig.get_config_dict(str(model))  # a Hub id: the cache, or a download
    return config.get("model_type")


def family_of(model: str, half: Half | None = None) -> ModelFamily:
    """The family of the checkpoint at `model` (folder or Hub id), for `half` when given."""
    return family_for_model_type(read_model_type(model), half, where=f"{model}/config.json")


def register_auto_classes() -> None:
    """Register our configs and models with transformers' Auto classes, so AutoConfig, AutoTokenizer
    and AutoProcessor of our own repos use this package's code instead of asking to trust the repos'
    remote code (the same files)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    for family in FAMILIES.values():
        for model_type, config_class, auto, model_class in (
            (family.encoder_model_type, family.encoder_config_class(), AutoModel, family.encoder_class()),
            (family.lm_model_type, family.lm_config_class(), AutoModelForCausalLM, family.lm_class()),
        ):
            AutoConfig.register(model_type, config_class, exist_ok=True)
            auto.register(config_class, model_class, exist_ok=True)
