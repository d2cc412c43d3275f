"""Clear failures, nothing half-written: every bad source or output folder fails before writing,
and a failure while writing removes the temporary folders and keeps what was there before."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hf_qwen3_deepstack import cli
from hf_qwen3_deepstack.hub import SplitError, split_checkpoint
from hf_qwen3_deepstack.hub import safetensors_io, split as split_module
from hf_qwen3_deepstack.tiny_checkpoint.model import write_tiny_text_checkpoint, write_tiny_vl_checkpoint


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_tiny_vl_checkpoint(tmp_path_factory.mktemp("fail-src") / "src", seed=0, max_shard_size="300KB")


@pytest.fixture
def src(pristine, tmp_path) -> Path:
    copy = tmp_path / "src"
    shutil.copytree(pristine, copy)
    return copy


def shard_of(src: Path, key: str = "model.language_model.layers.2.mlp.experts.gate_up_proj") -> Path:
    return src / json.loads((src / "model.safetensors.index.json").read_text())["weight_map"][key]


def assert_nothing_written(parent: Path, *names: str) -> None:
    for name in names:
        assert not (parent / name).exists(), name
    leftovers = [p.name for p in parent.iterdir() if ".split-" in p.name]
    assert not leftovers, leftovers


def run_split(src, out: Path, **kwargs):
    return split_checkpoint(src, out / "enc", out / "lm", progress=False, max_shard_size="200KB", **kwargs)


def test_missing_shard(src, tmp_path):
    missing = shard_of(src)
    missing.unlink()
    with pytest.raises(SplitError, match=f"missing: .*{missing.name}"):
        run_split(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_shard(src, tmp_path):
    shard = shard_of(src)
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(SplitError, match=rf"{shard.name} is truncated"):
        run_split(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_header(src, tmp_path):
    shard = shard_of(src)
    with open(shard, "r+b") as f:
        f.truncate(100)
    with pytest.raises(SplitError, match="truncated"):
        run_split(src, tmp_path / "out")


def test_not_qwen3_vl_moe(tmp_path):
    text = write_tiny_text_checkpoint(tmp_path / "text", seed=1)
    with pytest.raises(SplitError, match="not a Qwen3-VL-MoE checkpoint.*'qwen3_moe'"):
        run_split(text, tmp_path / "out")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SplitError, match="model_type 'llama'"):
        run_split(tmp_path / "other", tmp_path / "out")
    (tmp_path / "empty-src").mkdir()
    with pytest.raises(SplitError, match="no config.json"):
        run_split(tmp_path / "empty-src", tmp_path / "out")
    assert_nothing_written(tmp_path, "out")


def test_not_a_folder_nor_repo_id(tmp_path):
    with pytest.raises(SplitError, match="no such folder"):
        run_split(str(tmp_path / "nope"), tmp_path / "out")


def test_missing_tensor_and_bin_only(src, tmp_path):
    from safetensors.torch import load_file, save_file

    key = "model.visual.merger.norm.weight"
    index_file = src / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = src / index["weight_map"].pop(key)
    tensors = load_file(shard)
    del tensors[key]
    save_file(tensors, shard, metadata={"format": "pt"})
    index_file.write_text(json.dumps(index))
    with pytest.raises(SplitError, match=f"missing 1 tensor.*{key}"):
        run_split(src, tmp_path / "out")
    binonly = tmp_path / "bin"
    binonly.mkdir()
    shutil.copy(src / "config.json", binonly)
    (binonly / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(SplitError, match="only safetensors"):
        run_split(binonly, tmp_path / "out")


def test_existing_output_needs_overwrite(src, tmp_path):
    out = tmp_path / "out"
    (out / "lm").mkdir(parents=True)
    (out / "lm" / "keep.txt").write_text("user data")
    with pytest.raises(SplitError, match="not empty; pass --overwrite"):
        run_split(src, out)
    assert (out / "lm" / "keep.txt").read_text() == "user data" and not (out / "enc").exists()
    assert_nothing_written(out, "enc")
    # an empty existing folder is fine; --overwrite replaces the non-empty one
    (out / "enc").mkdir()
    run_split(src, out, overwrite=True)
    assert not (out / "lm" / "keep.txt").exists() and (out / "lm" / "config.json").is_file()
    assert_nothing_written(out)


def test_failure_while_writing_leaves_nothing_and_keeps_old_output(src, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_split(src, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = {"n": 0}
    real = split_module.write_shard

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # inside the language repo, after the encoder repo is complete
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(split_module, "write_shard", failing)
    with pytest.raises(OSError, match="disk full"):
        run_split(src, out, overwrite=True)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert_nothing_written(out)
    # a fresh target: no folder at all after the failure, also not the parents it created
    calls["n"] = 0
    with pytest.raises(OSError):
        run_split(src, tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()


def test_interrupt_while_writing(src, tmp_path, monkeypatch):
    real = safetensors_io.iter_tensor_chunks

    def interrupted(info, *args, **kwargs):
        if "layers.1" in info.name:
            raise KeyboardInterrupt
        yield from real(info, *args, **kwargs)

    monkeypatch.setattr(safetensors_io, "iter_tensor_chunks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_split(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_options(src, tmp_path):
    with pytest.raises(SplitError, match="--dtype"):
        run_split(src, tmp_path / "out", dtype="int8")
    with pytest.raises(SplitError, match="invalid size"):
        split_checkpoint(src, tmp_path / "e", tmp_path / "l", max_shard_size="lots", progress=False)
    with pytest.raises(SplitError, match="different folders"):
        split_checkpoint(src, tmp_path / "same", tmp_path / "same", progress=False)
    with pytest.raises(SplitError, match="overlaps the source"):
        split_checkpoint(src, src / "enc", tmp_path / "l", progress=False)
    assert_nothing_written(tmp_path, "out", "e", "l", "same")


def test_cli_reports_clear_error(src, tmp_path, capsys):
    shard_of(src).unlink()
    code = cli.main(["split", str(src), "--encoder-out", str(tmp_path / "e"), "--lm-out", str(tmp_path / "l"),
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "error: source checkpoint" in err and "nothing was written" in err
    assert_nothing_written(tmp_path, "e", "l")
    assert sorted(os.listdir(tmp_path)) == ["src"]
