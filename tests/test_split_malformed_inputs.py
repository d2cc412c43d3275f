"""A malformed safetensors header entry or index, a path that does not exist and a Hub id while
the Hub is unreachable each give a clear error naming what is wrong, fast, never a traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_qwen3_deepstack import cli
from hf_qwen3_deepstack.hub import SplitError, split_checkpoint
from hf_qwen3_deepstack.hub.source import SourceError, locate_checkpoint
from hf_qwen3_deepstack.tiny_checkpoint.model import write_tiny_vl_checkpoint

KEY = "model.visual.merger.norm.weight"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_tiny_vl_checkpoint(tmp_path_factory.mktemp("malformed-src") / "src", seed=0, max_shard_size="300KB")


@pytest.fixture
def src(pristine, tmp_path) -> Path:
    shutil.copytree(pristine, tmp_path / "src")
    return tmp_path / "src"


def rewrite_header(shard: Path, edit) -> None:
    """Apply `edit(header dict)` to the shard's JSON header, keeping its tensor data."""
    raw = shard.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    shard.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def shard_holding(src: Path, key: str = KEY) -> Path:
    return src / json.loads((src / "model.safetensors.index.json").read_text())["weight_map"][key]


HEADER_DAMAGE = {  # what is wrong -> (edit, expected words in the error)
    "shape of strings": (lambda h: h[KEY].update(shape=["8", "x"]), r"shape \['8', 'x'\]; expected a list of non-negative integers"),
    "shape not a list": (lambda h: h[KEY].update(shape=12), r"shape 12; expected a list"),
    "shape of floats": (lambda h: h[KEY].update(shape=[1.5]), r"shape \[1\.5\]"),
    "negative shape": (lambda h: h[KEY].update(shape=[-8]), r"shape \[-8\]"),
    "unknown dtype": (lambda h: h[KEY].update(dtype="F33"), r"dtype 'F33'; expected one of F64, F32"),
    "dtype not a string": (lambda h: h[KEY].update(dtype=["F32"]), r"dtype \['F32'\]"),
    "one offset": (lambda h: h[KEY].update(data_offsets=[0]), r"data_offsets \[0\]; expected \[begin, end\]"),
    "entry not an object": (lambda h: h.update({KEY: "F32"}), r"header entry 'F32'; expected an object"),
    "metadata not strings": (lambda h: h.update(__metadata__={"format": 1}), r"__metadata__ must map strings to strings"),
}


@pytest.mark.parametrize("damage", list(HEADER_DAMAGE))
def test_malformed_header_entry_is_an_error_naming_the_file(src, tmp_path, damage):
    edit, words = HEADER_DAMAGE[damage]
    shard = shard_holding(src)
    rewrite_header(shard, edit)
    with pytest.raises(SplitError, match=rf"{shard.name}.*{words}" if "metadata" in damage else
                       rf"{shard.name} is not a valid safetensors file: tensor '{KEY}' has {words}"):
        split_checkpoint(src, tmp_path / "enc", tmp_path / "lm", progress=False)
    assert not (tmp_path / "enc").exists() and not (tmp_path / "lm").exists()


INDEX_DAMAGE = {
    "weight_map not an object": ({"weight_map": ["model-00001-of-00002.safetensors"]}, r"expected an object with a 'weight_map' object"),
    "index not an object": ([], r"expected an object with a 'weight_map' object"),
    "shard not a string": ({"weight_map": {KEY: ["a.safetensors"]}}, rf"maps '{KEY}' to \['a.safetensors'\]; expected a shard file name"),
    "shard outside the folder": ({"weight_map": {KEY: "../x.safetensors"}}, r"to '\.\./x\.safetensors'; expected a shard file name"),
    "not JSON": ("{weight_map", r"is not a readable safetensors index"),
}


@pytest.mark.parametrize("damage", list(INDEX_DAMAGE))
def test_malformed_index_is_an_error_naming_the_file(src, tmp_path, damage, capsys):
    content, words = INDEX_DAMAGE[damage]
    index = src / "model.safetensors.index.json"
    index.write_text(content if isinstance(content, str) else json.dumps(content))
    code = cli.main(["split", str(src), "--encoder-out", str(tmp_path / "enc"), "--lm-out", str(tmp_path / "lm"),
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.splitlines()[0].startswith(f"error: {index}") and err.splitlines()[1] == "nothing was written."
    assert len(re.findall(words, err)) == 1, err


def test_a_local_path_that_does_not_exist_says_so(tmp_path, capsys):
    code = cli.main(["split", str(tmp_path / "nope"), "--encoder-out", str(tmp_path / "e"), "--lm-out",
                     str(tmp_path / "l"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {tmp_path / 'nope'}: no such folder" in err and "Repo id must" not in err
    with pytest.raises(SourceError, match=r"^\./not-here: no such folder"):
        locate_checkpoint("./not-here")


def offline_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_HOME": str(tmp_path / "hf-home"), **extra}


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "endpoint refuses connections"])
def test_a_hub_id_without_hub_access_fails_within_seconds_naming_the_cause(tmp_path, how):
    extra = {"HF_HUB_OFFLINE": "1"} if how == "HF_HUB_OFFLINE" else {"HF_ENDPOINT": "http://127.0.0.1:9"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "hf_qwen3_deepstack.cli", "split", "Qwen/Qwen3-VL-30B-A3B-Instruct",
         "--encoder-out", str(tmp_path / "e"), "--lm-out", str(tmp_path / "l"), "--no-progress"],
        env=offline_env(tmp_path, **extra), capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "the Hub (" in proc.stderr and "is unreachable (" in proc.stderr, proc.stderr
    assert "not in the local Hugging Face cache" in proc.stderr and "pass the local folder DIR instead" in proc.stderr
    assert elapsed < 20, elapsed  # transformers' own retries take ~25 s


def test_a_cached_hub_repo_is_used_while_the_hub_is_unreachable(tmp_path, monkeypatch):
    commit = "0123456789" * 4
    snapshot = tmp_path / "hf-home" / "hub" / "models--Org--Tiny" / "snapshots" / commit
    write_tiny_vl_checkpoint(snapshot, seed=0)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit)
    for key, value in offline_env(tmp_path, HF_ENDPOINT="http://127.0.0.1:9").items():
        monkeypatch.setenv(key, value)
    script = ("from hf_qwen3_deepstack.hub.source import locate_checkpoint; "
              "print(locate_checkpoint('Org/Tiny'))")
    proc = subprocess.run([sys.executable, "-c", script], env=dict(os.environ), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == snapshot
