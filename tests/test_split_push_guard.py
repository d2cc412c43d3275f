"""Nothing is uploaded without --push-to-hub; with it, create_repo + upload_folder get exactly
the two output folders. The Hub functions are replaced, so no network is needed."""

from __future__ import annotations

import huggingface_hub
import pytest

from hf_qwen3_deepstack import cli
from hf_qwen3_deepstack.hub import push
from hf_qwen3_deepstack.tiny_checkpoint.model import write_tiny_vl_checkpoint


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return write_tiny_vl_checkpoint(tmp_path_factory.mktemp("push-src") / "src", seed=0, max_shard_size="300KB")


@pytest.fixture
def hub_calls(monkeypatch):
    calls = []

    def fake_create_repo(repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def fake_upload_folder(**kwargs):
        calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"

    def forbidden(*args, **kwargs):
        raise AssertionError("a real Hub API was called")

    monkeypatch.setattr(push, "create_repo", fake_create_repo)
    monkeypatch.setattr(push, "upload_folder", fake_upload_folder)
    for name in ("create_repo", "upload_folder", "create_commit", "upload_file", "upload_large_folder"):
        if hasattr(huggingface_hub.HfApi, name):
            monkeypatch.setattr(huggingface_hub.HfApi, name, forbidden)
    return calls


def split_args(src, tmp_path, *extra):
    return ["split", str(src), "--encoder-out", str(tmp_path / "enc"), "--lm-out", str(tmp_path / "lm"),
            "--max-shard-size", "200KB", "--no-progress", *extra]


def test_no_push_without_flag(src, tmp_path, hub_calls, capsys):
    assert cli.main(split_args(src, tmp_path)) == 0
    assert hub_calls == []
    assert (tmp_path / "enc" / "config.json").is_file() and (tmp_path / "lm" / "config.json").is_file()


def test_push_with_flag(src, tmp_path, hub_calls, capsys):
    assert cli.main(split_args(src, tmp_path, "--push-to-hub", "me/tiny-encoder", "me/tiny-lm", "--private")) == 0
    assert [(c[0], c[1]) for c in hub_calls] == [
        ("create_repo", "me/tiny-encoder"), ("upload_folder", "me/tiny-encoder"),
        ("create_repo", "me/tiny-lm"), ("upload_folder", "me/tiny-lm"),
    ]
    assert hub_calls[0][2]["private"] is True and hub_calls[0][2]["exist_ok"] is True
    assert hub_calls[1][2]["folder_path"] == str(tmp_path / "enc")
    assert hub_calls[3][2]["folder_path"] == str(tmp_path / "lm")
    # the cards name the push targets
    assert "me/tiny-lm" in (tmp_path / "enc" / "README.md").read_text()
    assert "me/tiny-encoder" in (tmp_path / "lm" / "README.md").read_text()
    assert "pushed:" in capsys.readouterr().out


def test_dry_run_writes_and_uploads_nothing(src, tmp_path, hub_calls, capsys):
    code = cli.main(split_args(src, tmp_path, "--push-to-hub", "me/tiny-encoder", "me/tiny-lm", "--dry-run"))
    out = capsys.readouterr().out
    assert code == 0 and hub_calls == []
    assert not (tmp_path / "enc").exists() and not (tmp_path / "lm").exists()
    assert "[dry run]" in out and "would write" in out and "model.safetensors.index.json" in out
    assert "create_repo me/tiny-encoder" in out and "upload_folder" in out and "public" in out
    assert "modeling_qwen3_vl_moe_encoder_only.py" in out and "README.md" in out


def test_dry_run_without_push(src, tmp_path, hub_calls, capsys):
    assert cli.main(split_args(src, tmp_path, "--dry-run")) == 0
    assert "nothing would be uploaded" in capsys.readouterr().out and hub_calls == []
    assert not (tmp_path / "enc").exists()


def test_private_requires_push(src, tmp_path, hub_calls, capsys):
    assert cli.main(split_args(src, tmp_path, "--private")) == 2
    assert hub_calls == [] and not (tmp_path / "enc").exists()
