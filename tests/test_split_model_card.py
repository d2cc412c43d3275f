"""README.md of each output repo: rendered from the model_cards/ templates with huggingface_hub's
ModelCard, parses back with ModelCard.load, metadata as specified: base_model only for a Hub id,
the index mentioned only when there are several shards."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_qwen3_deepstack.hub import split_checkpoint
from hf_qwen3_deepstack.hub.model_card import TEMPLATE_DIR
from hf_qwen3_deepstack.hub.split import SplitError
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
                     lm_repo_id="org/tiny-lm", base_model="Qwen/Tiny-VL", max_shard_size="200KB")
    return root, src


@pytest.mark.parametrize("half,pipeline,other", [("enc", "image-feature-extraction", "org/tiny-lm"),
                                                  ("lm", "image-text-to-text", "org/tiny-encoder")])
def test_card_metadata_and_body(split, half, pipeline, other):
    root, src = split
    card = ModelCard.load(root / half / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["base_model"] == "Qwen/Tiny-VL"  # --base-model
    assert data["license"] == "apache-2.0"
    assert data["pipeline_tag"] == pipeline
    for tag in ("qwen3_vl_moe", "deepstack", "disaggregated-inference", "custom_code"):
        assert tag in data["tags"]
    body = card.text
    assert "trust_remote_code=True" in body and other in body and "torchrun" in body
    assert "fingerprint sha256:" in body  # exact source identity of a local source without Hub id
    assert "(E, H, 2I)" in body  # the expert layout note
    assert "[Qwen/Tiny-VL](https://huggingface.co/Qwen/Tiny-VL)" in body and str(src) in body
    shards = len(list((root / half).glob("*.safetensors")))
    assert shards > 1 and f"{shards} safetensors shards with an index (`model.safetensors.index.json`)" in body
    assert ("AutoModelForCausalLM.from_pretrained(\"org/tiny-lm\"" in body)
    assert ("AutoModel.from_pretrained(\"org/tiny-encoder\"" in body)


def test_local_source_gives_no_base_model_nor_license_and_one_shard_no_index(tmp_path):
    src = write_tiny_vl_checkpoint(tmp_path / "src", seed=0)
    split_checkpoint(src, tmp_path / "enc", tmp_path / "lm", progress=False)
    for half in ("enc", "lm"):
        card = ModelCard.load(tmp_path / half / "README.md")
        data = card.data.to_dict()
        assert "base_model" not in data and "license" not in data, data
        assert str(src) not in card.data.to_yaml() and "of a local checkpoint" in card.text
        assert [p.name for p in (tmp_path / half).glob("*.safetensors")] == ["model.safetensors"]
        assert "model.safetensors.index.json" not in card.text and "one safetensors file (`model.safetensors`)" in card.text
    assert data["pipeline_tag"] == "image-text-to-text"


def test_base_model_must_be_a_hub_id(tmp_path):
    src = write_tiny_vl_checkpoint(tmp_path / "src", seed=0)
    with pytest.raises(SplitError, match="--base-model '/data/x' is not a Hub repo id"):
        split_checkpoint(src, tmp_path / "enc", tmp_path / "lm", progress=False, base_model="/data/x")


def test_hub_cache_source_gives_repo_id_and_commit(tmp_path):
    commit = "89abcdef" * 5
    snapshot = tmp_path / "hub" / "models--Qwen--Tiny-VL" / "snapshots" / commit
    write_tiny_vl_checkpoint(snapshot, seed=0)
    split_checkpoint(snapshot, tmp_path / "enc", tmp_path / "lm", progress=False)
    card = ModelCard.load(tmp_path / "enc" / "README.md")
    assert card.data.base_model == "Qwen/Tiny-VL"
    assert f"Qwen/Tiny-VL@{commit}" in card.text



def test_templates_ship_from_the_top_level_model_cards_folder():
    assert TEMPLATE_DIR == REPO_ROOT / "model_cards"
    assert not (REPO_ROOT / "hf_qwen3_deepstack" / "hub" / "model_card_templates").exists()
