"""README.md of each output repo: rendered from model_cards/ templates with huggingface_hub's
ModelCard, parses back with ModelCard.load, metadata as specified."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_qwen3_deepstack.hub import split_checkpoint
from hf_qwen3_deepstack.hub.model_card import TEMPLATE_DIR
from hf_qwen3_deepstack.tiny_checkpoint.model import write_tiny_vl_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_CARD = """---
license: apache-2.0
pipeline_tag: image-text-to-text
library_name: transformers
---
# Tiny Qwen3-VL-MoE
"""


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    src = write_tiny_vl_checkpoint(root / "src", seed=0, max_shard_size="300KB")
    (src / "README.md").write_text(SOURCE_CARD)
    split_checkpoint(src, root / "enc", root / "lm", progress=False, encoder_repo_id="org/tiny-encoder",
                     lm_repo_id="org/tiny-lm")
    return root, src


@pytest.mark.parametrize("half,pipeline,other", [("enc", "image-feature-extraction", "org/tiny-lm"),
                                                  ("lm", "image-text-to-text", "org/tiny-encoder")])
def test_card_metadata_and_body(split, half, pipeline, other):
    root, src = split
    card = ModelCard.load(root / half / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["base_model"] == str(src)
    assert data["license"] == "apache-2.0"
    assert data["pipeline_tag"] == pipeline
    for tag in ("qwen3_vl_moe", "deepstack", "disaggregated-inference", "custom_code"):
        assert tag in data["tags"]
    body = card.text
    assert "trust_remote_code=True" in body and other in body and "torchrun" in body
    assert "fingerprint sha256:" in body  # exact source identity of a local source without Hub id
    assert "(E, H, 2I)" in body  # the expert layout note
    assert ("AutoModelForCausalLM.from_pretrained(\"org/tiny-lm\"" in body)
    assert ("AutoModel.from_pretrained(\"org/tiny-encoder\"" in body)


def test_no_license_when_source_has_none(tmp_path):
    src = write_tiny_vl_checkpoint(tmp_path / "src", seed=0)
    split_checkpoint(src, tmp_path / "enc", tmp_path / "lm", progress=False)
    data = ModelCard.load(tmp_path / "lm" / "README.md").data.to_dict()
    assert "license" not in data and data["pipeline_tag"] == "image-text-to-text"


def test_hub_cache_source_gives_repo_id_and_commit(tmp_path):
    commit = "89abcdef" * 5
    snapshot = tmp_path / "hub" / "models--Qwen--Tiny-VL" / "snapshots" / commit
    write_tiny_vl_checkpoint(snapshot, seed=0)
    split_checkpoint(snapshot, tmp_path / "enc", tmp_path / "lm", progress=False)
    card = ModelCard.load(tmp_path / "enc" / "README.md")
    assert card.data.base_model == "Qwen/Tiny-VL"
    assert f"Qwen/Tiny-VL@{commit}" in card.text


def test_templates_in_model_cards_folder_are_the_package_templates():
    for name in ("encoder.md", "lm.md"):
        assert (REPO_ROOT / "model_cards" / name).read_bytes() == (TEMPLATE_DIR / name).read_bytes(), name
