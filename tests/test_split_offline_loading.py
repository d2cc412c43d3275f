"""`split` output repos load with plain transformers + trust_remote_code, offline, in a process
where hf_qwen3_deepstack is not importable, and reproduce the monolithic model exactly.

Two sources: a local sharded checkpoint folder (split in-process through the library API) and
the same checkpoint in an offline Hub cache (`HF_HUB_OFFLINE=1`, `HF_HOME`, split through the
CLI with a repo id). The second pair of outputs is itself placed in the offline cache and
loaded by repo id, as a user of the published repos would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hf_qwen3_deepstack.hub import split_checkpoint
from hf_qwen3_deepstack.tiny_checkpoint.model import write_tiny_vl_checkpoint
from hf_qwen3_deepstack.tiny_checkpoint.special_tokens import (
    IMAGE_TOKEN_ID,
    VISION_END_TOKEN_ID,
    VISION_START_TOKEN_ID,
)

from _isolated_python import run_isolated, run_repo_python

SRC_REPO = "tiny-org/tiny-qwen3-vl-moe"
SRC_COMMIT = "0123456789abcdef0123456789abcdef01234567"
ENC_REPO, LM_REPO = "tiny-org/tiny-qwen3-vl-moe-encoder", "tiny-org/tiny-qwen3-vl-moe-lm"
OUT_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
GRIDS = [[1, 4, 4], [1, 8, 4]]  # 4 + 8 visual tokens
PATCH_DIM = 3 * 2 * 16 * 16


def write_source(path: Path, **kwargs) -> Path:
    """Tiny sharded Qwen3-VL-MoE checkpoint (Hub expert layout) + processor files when available."""
    kwargs.setdefault("max_shard_size", "300KB")
    write_tiny_vl_checkpoint(path, seed=0, **kwargs)
    try:
        from hf_qwen3_deepstack.tiny_checkpoint.processor import write_tiny_processor
    except ImportError:
        return path
    write_tiny_processor(path)
    return path


def make_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = [11, 12, 13]
    for t, h, w in GRIDS:
        ids += [VISION_START_TOKEN_ID] + [IMAGE_TOKEN_ID] * (t * h * w // 4) + [VISION_END_TOKEN_ID] + [21, 22]
    ids += [31, 32, 33]
    input_ids = torch.tensor([ids])
    patches = sum(t * h * w for t, h, w in GRIDS)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == IMAGE_TOKEN_ID).long(),
        "pixel_values": torch.randn(patches, PATCH_DIM, generator=g),
        "image_grid_thw": torch.tensor(GRIDS),
    }


def hub_cache_snapshot(hf_home: Path, repo_id: str, commit: str, files_from: Path) -> Path:
    """Hand-made Hub cache entry: hub/models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(files_from, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


CHILD = r"""
import sys, torch
from transformers import AutoModel, AutoModelForCausalLM
from transformers.utils import cached_file

inputs_file, pairs = ARGS
inputs = torch.load(inputs_file)
for enc_id, lm_id, out_file in pairs:
    enc = AutoModel.from_pretrained(enc_id, trust_remote_code=True).eval()
    lm = AutoModelForCausalLM.from_pretrained(lm_id, trust_remote_code=True).eval()
    assert type(enc).__module__.startswith("transformers_modules"), type(enc).__module__
    assert type(lm).__module__.startswith("transformers_modules"), type(lm).__module__
    with torch.no_grad():
        feats = enc(pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
        enc_out = enc.encode(**inputs)
        logits = lm(**enc_out.lm_inputs()).logits
        generated = lm.generate(**enc_out.lm_inputs(), max_new_tokens=8, do_sample=False)
    result = {
        "image_embeds": torch.cat(feats.image_embeds),
        "image_deepstack": torch.cat(feats.image_deepstack_embeds, dim=1),
        "visual_embeds": enc_out.visual_embeds,
        "deepstack": enc_out.deepstack_visual_embeds,
        "logits": logits,
        "generated": generated,
        "enc_weights": {k: v.clone() for k, v in enc.state_dict().items()},
        "extras": [],
    }
    try:
        has_processor = cached_file(enc_id, "preprocessor_config.json") is not None
    except OSError:
        has_processor = False
    if has_processor:
        # (AutoProcessor also builds the video processor, which needs torchvision: not on this CPU box)
        from transformers import AutoImageProcessor, AutoTokenizer
        image_processor = AutoImageProcessor.from_pretrained(enc_id, trust_remote_code=True)
        for repo in (enc_id, lm_id):
            tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
            assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == 485
            assert tokenizer.chat_template, repo
            result["extras"].append(type(tokenizer).__name__)
        result["extras"].append(type(image_processor).__name__)
    torch.save(result, out_file)
    print("OK", enc_id, result["extras"])
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from transformers import Qwen3VLMoeForConditionalGeneration

    root = tmp_path_factory.mktemp("split-offline")
    src = write_source(root / "src")
    inputs = make_inputs()
    torch.save(inputs, root / "inputs.pt")
    ref = Qwen3VLMoeForConditionalGeneration.from_pretrained(src).eval()
    with torch.no_grad():
        vis = ref.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"], return_dict=True)
        logits = ref(**inputs).logits
        generated = ref.generate(**inputs, max_new_tokens=8, do_sample=False)
    expected = {
        "visual": vis.pooler_output,
        "deepstack": torch.stack(vis.deepstack_features),
        "logits": logits,
        "generated": generated,
        "visual_weights": {k.removeprefix("model."): v for k, v in ref.state_dict().items() if k.startswith("model.visual.")},
    }
    return root, src, expected


def check_against_reference(result: dict, expected: dict) -> None:
    torch.testing.assert_close(result["image_embeds"], expected["visual"], atol=1e-5, rtol=0)
    torch.testing.assert_close(result["image_deepstack"], expected["deepstack"], atol=1e-5, rtol=0)
    torch.testing.assert_close(result["visual_embeds"], expected["visual"], atol=1e-5, rtol=0)
    torch.testing.assert_close(result["deepstack"], expected["deepstack"], atol=1e-5, rtol=0)
    assert (result["logits"] - expected["logits"]).abs().max().item() <= 1e-5
    assert torch.equal(result["generated"], expected["generated"])
    # weights really came from the checkpoint (a wrong key mapping would only warn)
    for key, value in expected["visual_weights"].items():
        assert torch.equal(result["enc_weights"][key], value), key


def _source_keys(src: Path) -> dict[str, tuple[int, ...]]:
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shapes = {}
    for key, shard in index["weight_map"].items():
        with safe_open(src / shard, "pt") as f:
            shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def _repo_keys(repo: Path) -> dict[str, tuple[int, ...]]:
    index_file = repo / "model.safetensors.index.json"
    files = sorted(set(json.loads(index_file.read_text())["weight_map"].values())) if index_file.exists() else ["model.safetensors"]
    shapes = {}
    for name in files:
        with safe_open(repo / name, "pt") as f:
            assert f.metadata().get("format") == "pt"
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


@pytest.fixture(scope="module")
def loaded(reference):
    """Both splits, then ONE isolated process loads both pairs (saves an interpreter start)."""
    root, src, expected = reference
    # 1. local folder, through the library API
    local_enc, local_lm = root / "local" / "encoder", root / "local" / "lm"
    local = split_checkpoint(src, local_enc, local_lm, max_shard_size="200KB", progress=False)
    # 2. a Hub id in an offline cache, through the CLI
    hf_home = root / "hf-home"
    hub_cache_snapshot(hf_home, SRC_REPO, SRC_COMMIT, src)
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)}
    hub_enc, hub_lm = root / "hub" / "encoder", root / "hub" / "lm"
    hub = split_via_cli(hub_enc, hub_lm, offline)
    # publish the hub-source outputs into the offline cache: loaded by repo id, like a Hub user
    hub_cache_snapshot(hf_home, ENC_REPO, OUT_COMMIT, hub_enc)
    hub_cache_snapshot(hf_home, LM_REPO, OUT_COMMIT, hub_lm)
    pairs = [(str(local_enc), str(local_lm), str(root / "local.pt")), (ENC_REPO, LM_REPO, str(root / "hub.pt"))]
    stdout = run_isolated(CHILD.replace("ARGS", repr((str(root / "inputs.pt"), pairs))), cwd=root / "work", env=offline)
    return {"local": (local, torch.load(root / "local.pt")), "hub": (hub, torch.load(root / "hub.pt")),
            "stdout": stdout}


def split_via_cli(enc_dir: Path, lm_dir: Path, env: dict) -> str:
    proc = run_repo_python(
        ["-m", "hf_qwen3_deepstack.cli", "split", SRC_REPO, "--encoder-out", str(enc_dir), "--lm-out", str(lm_dir),
         "--max-shard-size", "250KB", "--no-progress"],
        env=env,
    )
    assert "wrote" in proc.stdout
    return proc.stdout


def test_local_folder_split_loads_offline_and_matches(reference, loaded):
    root, src, expected = reference
    enc_dir, lm_dir = root / "local" / "encoder", root / "local" / "lm"
    split, result = loaded["local"]
    assert split.encoder.out == enc_dir and len(split.encoder.shards) > 1 and len(split.lm.shards) > 1

    # layout: keys exactly the source's, fused experts in the Hub layout (== this source's layout)
    source = _source_keys(src)
    enc_keys, lm_keys = _repo_keys(enc_dir), _repo_keys(lm_dir)
    assert enc_keys == {k: v for k, v in source.items() if k.startswith("model.visual.")}
    assert lm_keys == {k: v for k, v in source.items() if not k.startswith("model.visual.")}
    assert "lm_head.weight" in lm_keys and lm_keys["model.language_model.layers.0.mlp.experts.gate_up_proj"] == (8, 64, 96)

    for repo in (enc_dir, lm_dir):
        config = json.loads((repo / "config.json").read_text())
        assert config["auto_map"]["AutoConfig"].startswith("configuration_")
        for target in config["auto_map"].values():
            assert (repo / (target.split(".")[0] + ".py")).is_file()
        assert (repo / "generation_config.json").is_file() and (repo / "README.md").is_file()
    assert json.loads((enc_dir / "config.json").read_text())["model_type"] == "qwen3_vl_moe_encoder_only"
    assert json.loads((lm_dir / "config.json").read_text())["model_type"] == "qwen3_moe_deepstack"
    video_config = json.loads((enc_dir / "video_preprocessor_config.json").read_text())
    assert video_config.pop("auto_map") == {
        "AutoVideoProcessor": "video_processing_qwen3_vl_pil.Qwen3VLVideoProcessorForRepo"}
    assert video_config == json.loads((src / "video_preprocessor_config.json").read_text())
    assert (enc_dir / "video_processing_qwen3_vl_pil.py").is_file()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json"):
        if (src / name).exists():
            assert (enc_dir / name).read_bytes() == (src / name).read_bytes(), name
            if "preprocessor" not in name:
                assert (lm_dir / name).read_bytes() == (src / name).read_bytes(), name
    assert not (lm_dir / "preprocessor_config.json").exists()

    check_against_reference(result, expected)
    if (src / "preprocessor_config.json").exists():
        assert result["extras"], loaded["stdout"]


def test_offline_hub_cache_split_via_cli_loads_by_repo_id(reference, loaded):
    root, src, expected = reference
    stdout, result = loaded["hub"]
    assert "wrote" in stdout
    card = (root / "hub" / "encoder" / "README.md").read_text()
    assert f"{SRC_REPO}@{SRC_COMMIT}" in card and f"base_model: {SRC_REPO}" in card
    check_against_reference(result, expected)


def test_transformers_expert_layout_is_written_in_hub_layout(tmp_path, reference):
    """A source saved by transformers 5 ((E, 2I, H) / (E, H, I)) gives byte-identical repos."""
    _, src_hub, _ = reference
    src_tf = write_tiny_vl_checkpoint(tmp_path / "src-tf", seed=0, expert_layout="transformers", max_shard_size="300KB")
    a = split_checkpoint(src_hub, tmp_path / "a-enc", tmp_path / "a-lm", max_shard_size="200KB", progress=False)
    b = split_checkpoint(src_tf, tmp_path / "b-enc", tmp_path / "b-lm", max_shard_size="200KB", progress=False)
    assert a.lm.transposed == 0 and b.lm.transposed == 8  # 4 layers x (gate_up, down)
    for half in ("enc", "lm"):
        ka, kb = _repo_keys(tmp_path / f"a-{half}"), _repo_keys(tmp_path / f"b-{half}")
        assert ka == kb
        for name in sorted(p.name for p in (tmp_path / f"a-{half}").glob("*.safetensors")):
            with safe_open(tmp_path / f"a-{half}" / name, "pt") as fa, safe_open(tmp_path / f"b-{half}" / name, "pt") as fb:
                for key in fa.keys():
                    assert torch.equal(fa.get_tensor(key), fb.get_tensor(key)), key


def test_dtype_conversion(tmp_path, reference):
    _, src, _ = reference
    split_checkpoint(src, tmp_path / "enc", tmp_path / "lm", dtype="bfloat16", max_shard_size="1GB", progress=False)
    assert (tmp_path / "lm" / "model.safetensors").is_file()  # one shard: no index, like save_pretrained
    assert not (tmp_path / "lm" / "model.safetensors.index.json").exists()
    with safe_open(tmp_path / "lm" / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
        gate_up = f.get_tensor("model.language_model.layers.1.mlp.experts.gate_up_proj")
    with safe_open(src / json.loads((src / "model.safetensors.index.json").read_text())["weight_map"][
            "model.language_model.layers.1.mlp.experts.gate_up_proj"], "pt") as f:
        original = f.get_tensor("model.language_model.layers.1.mlp.experts.gate_up_proj")
    assert torch.equal(gate_up, original.to(torch.bfloat16))
    assert json.loads((tmp_path / "lm" / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "enc" / "config.json").read_text())["dtype"] == "bfloat16"
