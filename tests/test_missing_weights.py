"""A half whose checkpoint lacks one of its own tensors does not load (it would keep a random
value and generate garbage): the error names the parameter. Every source: the full Qwen3-VL-MoE
checkpoint, the split repos, a text Qwen3-MoE checkpoint, and the same for dense Qwen3-VL (the
check is the loader's, driven by each model's own parameters); a tensor of the other half is not
needed."""

import json
import shutil
from pathlib import Path

import pytest
from _checkpoints import text_checkpoint, vl_checkpoint
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from hf_qwen3_deepstack import (
    Qwen3ForCausalLMWithDeepStack,
    Qwen3MoeForCausalLMWithDeepStack,
    Qwen3VLEncoderOnly,
    Qwen3VLMoeEncoderOnly,
)
from hf_qwen3_deepstack.checkpoint_view import MissingWeightsError
from hf_qwen3_deepstack.hub import split_checkpoint


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("missing-weights")
    full = vl_checkpoint(root, "vl-untied", tie_word_embeddings=False)
    split_checkpoint(full, root / "split-encoder", root / "split-lm", progress=False)
    dense = vl_checkpoint(root, "vl-dense-untied", family="dense", tie_word_embeddings=False)
    return {"full": full, "split-encoder": root / "split-encoder", "split-lm": root / "split-lm",
            "text": text_checkpoint(root), "dense": dense,
            "dense-text": text_checkpoint(root, "text-dense", family="dense"), "root": root}


def without_tensor(src: Path, dst: Path, key: str) -> Path:
    """A copy of checkpoint `src` in which tensor `key` is absent (shard and index)."""
    shutil.copytree(src, dst)
    found = False
    for shard in dst.glob("*.safetensors"):
        tensors = load_file(shard)
        if tensors.pop(key, None) is not None:
            found = True
            save_file(tensors, shard, metadata={"format": "pt"})
    index = dst / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"].pop(key)
        index.write_text(json.dumps(data))
    assert found, key
    return dst


CASES = [  # (source, class, removed checkpoint key, parameter named in the error)
    ("full", Qwen3VLMoeEncoderOnly, "model.visual.blocks.0.attn.qkv.weight", "visual.blocks.0.attn.qkv.weight"),
    ("full", Qwen3MoeForCausalLMWithDeepStack, "model.language_model.layers.1.mlp.experts.gate_up_proj",
     "model.layers.1.mlp.experts.gate_up_proj"),
    ("full", Qwen3MoeForCausalLMWithDeepStack, "lm_head.weight", "lm_head.weight"),
    ("split-encoder", Qwen3VLMoeEncoderOnly, "model.visual.merger.norm.weight", "visual.merger.norm.weight"),
    ("split-lm", Qwen3MoeForCausalLMWithDeepStack, "model.language_model.norm.weight", "model.norm.weight"),
    ("text", Qwen3MoeForCausalLMWithDeepStack, "model.layers.0.self_attn.q_proj.weight",
     "model.layers.0.self_attn.q_proj.weight"),
    ("dense", Qwen3VLEncoderOnly, "model.visual.deepstack_merger_list.0.norm.weight",
     "visual.deepstack_merger_list.0.norm.weight"),
    ("dense", Qwen3ForCausalLMWithDeepStack, "model.language_model.layers.1.mlp.down_proj.weight",
     "model.layers.1.mlp.down_proj.weight"),
    ("dense-text", Qwen3ForCausalLMWithDeepStack, "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight"),
]


@pytest.mark.parametrize("source,cls,key,param", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_a_missing_own_tensor_fails_the_load_and_names_it(sources, tmp_path, source, cls, key, param):
    damaged = without_tensor(sources[source], tmp_path / "damaged", key)
    with pytest.raises(MissingWeightsError, match=rf"1 parameter\(s\) of {cls.__name__}: {param}\. .*random"):
        cls.from_pretrained(damaged)


def test_a_missing_tensor_fails_the_remote_code_load_of_a_split_repo(sources, tmp_path):
    damaged = without_tensor(sources["split-lm"], tmp_path / "damaged", "model.language_model.layers.0.mlp.gate.weight")
    with pytest.raises(ValueError, match=r"of Qwen3MoeForCausalLMWithDeepStack: model\.layers\.0\.mlp\.gate\.weight"):
        AutoModelForCausalLM.from_pretrained(damaged, trust_remote_code=True)


def test_a_missing_tensor_of_the_other_half_does_not_matter(sources, tmp_path):
    damaged = without_tensor(sources["full"], tmp_path / "damaged", "model.visual.blocks.0.attn.qkv.weight")
    lm, info = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(damaged, output_loading_info=True)
    assert not info["missing_keys"] and lm.config._name_or_path == str(damaged)


def test_a_local_path_that_does_not_exist_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint folder .*/nope does not exist"):
        Qwen3VLMoeEncoderOnly.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"checkpoint folder \./nope-here does not exist"):
        Qwen3MoeForCausalLMWithDeepStack.from_pretrained("./nope-here")
