"""Dense Qwen3-VL through `split`: each repo holds exactly its half of the source's tensors, and the two
repos, loaded with plain transformers + trust_remote_code in a process where hf_qwen3_deepstack cannot
be imported, reproduce Qwen3VLForConditionalGeneration (fp32 logits within 1e-5, identical greedy
tokens), for tied and untied heads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _checkpoints import left_padded_batch, prompt, vl_checkpoint, with_token_types
from _isolated_python import run_isolated
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import Qwen3VLForConditionalGeneration

from hf_qwen3_deepstack.hub import split_checkpoint

HEADS = ["untied", "tied"]
NEW_TOKENS = 8
CASES = {
    "image_and_video": lambda: prompt(images=[(1, 6, 4)], videos=[(2, 4, 6)], seed=31),
    "left_padded_batch_of_two": lambda: left_padded_batch(
        prompt(images=[(1, 4, 4)], text_len=3, seed=32), prompt(images=[(1, 4, 6), (1, 4, 4)], seed=33)
    ),
}

CHILD = r"""
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM

for enc_dir, lm_dir, inputs_file, out_file in JOBS:
    enc = AutoModel.from_pretrained(enc_dir, trust_remote_code=True).eval()
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, trust_remote_code=True).eval()
    assert type(enc).__name__ == "Qwen3VLEncoderOnly", type(enc)
    assert type(lm).__name__ == "Qwen3ForCausalLMWithDeepStack", type(lm)
    assert type(enc).__module__.startswith("transformers_modules"), type(enc).__module__
    assert type(lm).__module__.startswith("transformers_modules"), type(lm).__module__
    inputs = load_file(inputs_file)
    out = enc.encode(**inputs)
    with torch.no_grad():
        logits = lm(**out.lm_inputs()).logits
    tokens = lm.generate(**out.lm_inputs(), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    save_file({"logits": logits.contiguous(), "tokens": tokens,
               "params": torch.tensor([sum(p.numel() for p in enc.parameters()),
                                       sum(p.numel() for p in lm.parameters())])}, out_file)
print("OK")
"""


def repo_keys(repo: Path) -> set[str]:
    keys = set()
    for file in repo.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            keys.update(f.keys())
    return keys


@pytest.fixture(scope="module")
def split_repos(tmp_path_factory):
    """Per head: (source, encoder repo, language repo), split from a sharded tiny dense checkpoint."""
    root = tmp_path_factory.mktemp("dense-split")
    repos = {}
    for head in HEADS:
        src = vl_checkpoint(root, f"src-{head}", family="dense", tie_word_embeddings=head == "tied")
        enc, lm = root / f"{head}-encoder", root / f"{head}-lm"
        split_checkpoint(src, enc, lm, max_shard_size="200KB", progress=False)
        repos[head] = (src, enc, lm)
    return root, repos


@pytest.mark.parametrize("head", HEADS)
def test_split_repos_hold_exactly_their_half_of_the_source(split_repos, head):
    _, repos = split_repos
    src, enc, lm = repos[head]
    source = repo_keys(src)
    assert repo_keys(enc) == {k for k in source if k.startswith("model.visual.")}
    assert repo_keys(lm) == {k for k in source if not k.startswith("model.visual.")}
    assert ("lm_head.weight" in repo_keys(lm)) == (head == "untied")
    assert json.loads((enc / "config.json").read_text())["model_type"] == "qwen3_vl_encoder_only"
    lm_config = json.loads((lm / "config.json").read_text())
    assert lm_config["model_type"] == "qwen3_deepstack" and lm_config["tie_word_embeddings"] == (head == "tied")
    for repo in (enc, lm):
        assert not any("moe" in p.name for p in repo.glob("*.py")), sorted(p.name for p in repo.glob("*.py"))
        card = (repo / "README.md").read_text()
        assert "Qwen3VLForConditionalGeneration" in card
        assert "Qwen3VLMoe" not in card and "MoE" not in card and "(E, H, 2I)" not in card


def test_split_repos_load_with_plain_transformers_and_match_qwen3_vl(split_repos):
    root, repos = split_repos
    jobs, expected = [], {}
    for head, (src, enc, lm) in repos.items():
        ref = Qwen3VLForConditionalGeneration.from_pretrained(src).eval()
        visual = sum(p.numel() for n, p in ref.named_parameters() if n.startswith("model.visual."))
        for case, make in CASES.items():
            inputs = make()
            save_file(inputs, root / f"{head}-{case}-inputs.safetensors")
            with torch.no_grad():
                logits = ref(**with_token_types(inputs)).logits
            tokens = ref.generate(**with_token_types(inputs), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                  do_sample=False)
            mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()
            expected[head, case] = (logits, tokens, mask, (visual, ref.num_parameters() - visual))
            jobs.append((str(enc), str(lm), str(root / f"{head}-{case}-inputs.safetensors"),
                         str(root / f"{head}-{case}-outputs.safetensors")))
    code = CHILD.replace("JOBS", repr(jobs)).replace("NEW", str(NEW_TOKENS))
    assert "OK" in run_isolated(code, cwd=root / "child")
    for (head, case), (logits, tokens, mask, params) in expected.items():
        got = load_file(root / f"{head}-{case}-outputs.safetensors")
        assert (got["logits"][mask] - logits[mask]).abs().max().item() <= 1e-5, (head, case)
        assert torch.equal(got["tokens"], tokens), (head, case)
        assert got["params"].tolist() == list(params), (head, case)
