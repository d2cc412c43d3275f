"""Upload the two split repos to the Hub (only ever called for `--push-to-hub`).

`create_repo` and `upload_folder` are looked up on this module at call time, so tests replace
them (`monkeypatch.setattr(push, "upload_folder", fake)`) and need no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import create_repo, upload_folder  # noqa: F401 - module attributes, patched in tests


@dataclass(frozen=True)
class PushTarget:
    folder: Path
    repo_id: str


def describe_push(targets: list[PushTarget], private: bool) -> list[str]:
    visibility = "private" if private else "public"
    lines = []
    for t in targets:
        files = sorted(p.name for p in t.folder.iterdir()) if t.folder.is_dir() else []
        lines.append(f"create_repo {t.repo_id} ({visibility}, exist_ok) and upload_folder {t.folder}"
                     + (f" ({len(files)} files)" if files else ""))
    return lines


def push_split(
    encoder_dir: str | Path,
    lm_dir: str | Path,
    encoder_repo_id: str,
    lm_repo_id: str,
    *,
    private: bool = False,
    token: str | bool | None = None,
    commit_message: str = "Upload split Qwen3-VL half (hf-qwen3-deepstack split)",
    dry_run: bool = False,
) -> list[str]:
    """Create both repos (exist_ok) and upload each folder; returns the commit URLs (or, with
    `dry_run`, the actions that would be taken)."""
    targets = [PushTarget(Path(encoder_dir), encoder_repo_id), PushTarget(Path(lm_dir), lm_repo_id)]
    if encoder_repo_id == lm_repo_id:
        raise ValueError("the encoder and language-model repos must have different ids")
    if dry_run:
        return describe_push(targets, private)
    for t in targets:
        if not (t.folder / "config.json").is_file():
            raise FileNotFoundError(f"{t.folder} is not a split output folder (no config.json); nothing pushed")
    urls = []
    for t in targets:
        create_repo(t.repo_id, private=private, exist_ok=True, repo_type="model", token=token)
        info = upload_folder(repo_id=t.repo_id, folder_path=str(t.folder), repo_type="model",
                             commit_message=commit_message, token=token)
        urls.append(str(getattr(info, "commit_url", info)))
    return urls
