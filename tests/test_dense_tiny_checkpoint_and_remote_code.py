"""`tiny-checkpoint --family dense` writes a deterministic dense Qwen3-VL checkpoint whose layout cannot
hide bugs (H != I, H != 2I) and whose processor is transformers' own; the dense halves' Hub code keeps
the remote-code rules (flat, torch + transformers only, model types transformers does not know)."""

from __future__ import annotations

import ast
import hashlib
import json

import pytest

from hf_qwen3_deepstack.families import FAMILIES
from hf_qwen3_deepstack.hub.remote_code import REMOTE_CODE

STDLIB = {"itertools", "dataclasses", "typing", "json", "os", "tempfile", "collections", "contextlib", "pathlib"}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_writes_the_same_dense_checkpoint_twice(tmp_path, capsys):
    from transformers import Qwen3VLForConditionalGeneration

    from hf_qwen3_deepstack.cli import main
    from hf_qwen3_deepstack.tiny_checkpoint.video import load_processor

    for name in ("a", "b"):
        assert main(["tiny-checkpoint", str(tmp_path / name), "--family", "dense", "--seed", "2"]) == 0
    assert "tiny Qwen3-VL checkpoint" in capsys.readouterr().out
    assert _sha(tmp_path / "a" / "model.safetensors") == _sha(tmp_path / "b" / "model.safetensors")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    text = config["text_config"]
    assert config["model_type"] == "qwen3_vl" and "num_experts" not in text
    assert text["hidden_size"] not in (text["intermediate_size"], 2 * text["intermediate_size"])
    model = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path / "a")
    assert type(model.model.language_model.layers[0].mlp).__name__ == "Qwen3VLTextMLP"
    processor = load_processor(tmp_path / "a")
    assert type(processor).__name__ == "Qwen3VLProcessor" and processor.image_token_id == config["image_token_id"]


def test_moe_stays_the_default_family(tmp_path):
    from hf_qwen3_deepstack.cli import main

    assert main(["tiny-checkpoint", str(tmp_path / "moe")]) == 0
    assert json.loads((tmp_path / "moe" / "config.json").read_text())["model_type"] == "qwen3_vl_moe"


@pytest.mark.parametrize("half", ["encoder", "lm"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_hub_code_is_flat_and_imports_only_torch_and_transformers(family, half):
    files = REMOTE_CODE[family][half].files()
    names = {f.stem for f in files}
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in names, (file.name, node.module)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for module in modules:
                    assert module.split(".")[0] in {"torch", "transformers", *STDLIB}, (file.name, module)
    if family == "dense":  # the dense repos do not carry the MoE modules
        assert not any("moe" in name for name in names), names


def test_our_model_types_are_unique():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    ours = [t for f in FAMILIES.values() for t in (f.encoder_model_type, f.lm_model_type)]
    assert len(set(ours)) == len(ours)
    assert not set(ours) & set(CONFIG_MAPPING_NAMES)
    for family in FAMILIES.values():
        assert family.encoder_config_class().model_type == family.encoder_model_type
        assert family.lm_config_class().model_type == family.lm_model_type
