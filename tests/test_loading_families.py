"""The runtime's loading functions pick the family (dense Qwen3-VL or Qwen3-VL-MoE) from the checkpoint's
model_type, for full checkpoints, split repos and text-only checkpoints, and load our own repos with
this package's classes: transformers never asks whether to trust their remote code."""

from __future__ import annotations

import builtins
import json

import pytest
import torch
from _checkpoints import text_checkpoint

from hf_qwen3_deepstack.families import FAMILIES, family_for_model_type
from hf_qwen3_deepstack.runtime.models import load_encoder, load_lm, load_monolithic, max_positions
from hf_qwen3_deepstack.tiny_checkpoint.processor import build_tiny_tokenizer, tokenizer_config

CPU, FP32 = torch.device("cpu"), torch.float32


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint_dir, tmp_path_factory):
    """family -> (full checkpoint with processor, encoder repo, language repo)."""
    from hf_qwen3_deepstack.hub.split import split_checkpoint
    from hf_qwen3_deepstack.tiny_checkpoint.build import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("families")
    full = {"moe": tiny_checkpoint_dir, "dense": write_tiny_checkpoint(root / "dense", seed=0, family="dense")}
    out = {}
    for family, path in full.items():
        split_checkpoint(path, root / f"{family}-encoder", root / f"{family}-lm", progress=False)
        out[family] = (path, root / f"{family}-encoder", root / f"{family}-lm")
    return out


@pytest.fixture
def no_prompt(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"interactive prompt: {args[0] if args else ''}")

    monkeypatch.setattr(builtins, "input", refuse)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_both_halves_load_their_family_from_full_checkpoints_and_split_repos(checkpoints, no_prompt, family):
    full, enc_repo, lm_repo = checkpoints[family]
    expected = FAMILIES[family]
    for enc_source, lm_source in ((full, full), (enc_repo, lm_repo)):
        processor, enc = load_encoder(str(enc_source), FP32, CPU)
        tokenizer, lm = load_lm(str(lm_source), FP32, CPU)
        assert type(enc) is expected.encoder_class() and type(lm) is expected.lm_class()
        assert processor.image_token_id == enc.config.image_token_id
        assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == lm.config.image_token_id
        assert max_positions(str(lm_source)) == lm.config.max_position_embeddings
    # the split repos hold the same weights as the full checkpoint
    _, full_lm = load_lm(str(full), FP32, CPU)
    assert all(torch.equal(a, b) for a, b in zip(full_lm.state_dict().values(), lm.state_dict().values()))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_language_half_loads_a_text_only_checkpoint_of_its_family(tmp_path_factory, family):
    path = text_checkpoint(tmp_path_factory.mktemp("text"), f"text-{family}", family=family)
    (path / "tokenizer.json").write_text(build_tiny_tokenizer().to_str())  # load_lm also loads the tokenizer
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config()))
    _, lm = load_lm(str(path), FP32, CPU)
    assert type(lm) is FAMILIES[family].lm_class()
    assert lm.config.source_model_type == FAMILIES[family].text_model_type


@pytest.mark.parametrize("family", list(FAMILIES))
def test_load_monolithic_gives_transformers_own_model(checkpoints, family):
    full, enc_repo, _ = checkpoints[family]
    processor, model = load_monolithic(str(full), FP32, CPU)
    assert type(model) is FAMILIES[family].monolithic_class()
    assert type(model).__module__.startswith("transformers.")
    with pytest.raises(ValueError, match="needs a full checkpoint"):
        load_monolithic(str(enc_repo), FP32, CPU)


def test_a_half_of_the_wrong_kind_or_an_unknown_model_type_is_refused_by_name(checkpoints, tmp_path):
    _, enc_repo, lm_repo = checkpoints["dense"]
    with pytest.raises(ValueError, match="model_type 'qwen3_deepstack'; an encoder loads from model_type .*'qwen3_vl'"):
        load_encoder(str(lm_repo), FP32, CPU)
    with pytest.raises(ValueError, match="model_type 'qwen3_vl_encoder_only'; a language model loads from"):
        load_lm(str(enc_repo), FP32, CPU)
    with pytest.raises(ValueError, match="model_type 'llama'"):
        family_for_model_type("llama")
    with pytest.raises(FileNotFoundError, match="checkpoint folder .*missing does not exist"):
        load_lm(str(tmp_path / "missing"), FP32, CPU)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_encoder(str(tmp_path), FP32, CPU)
