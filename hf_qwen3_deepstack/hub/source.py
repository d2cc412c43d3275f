"""Where a checkpoint named on the command line (a local folder or a Hub repo id) is, decided fast.

`locate_checkpoint` answers within seconds, also without Hub access; `resolve_source` (used by
`split`) then gives a local folder plus exact provenance for the model cards.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

# What the split reads from a source: weights, configs, processor/tokenizer files, the card.
SOURCE_ALLOW_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "*.json",
    "*.jinja",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "README.md",
    "LICENSE*",
]
METADATA_ALLOW_PATTERNS = [p for p in SOURCE_ALLOW_PATTERNS if p != "*.safetensors"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
HUB_PROBE_TIMEOUT_S = 10.0  # one request, no retries: an unreachable Hub is reported at once
_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})/?$")


class SourceError(ValueError):
    """SRC cannot be resolved or is not a usable checkpoint."""


def is_hub_id(spec: str) -> bool:
    """ORG/NAME (or NAME) as the Hub spells repo ids; paths ('./x', '/x', '~/x') are not."""
    return not spec.startswith((".", "/", "~")) and bool(_REPO_ID.match(spec))


def locate_checkpoint(spec: str, *, revision: str | None = None, token: str | bool | None = None,
                      probe_timeout: float = HUB_PROBE_TIMEOUT_S) -> str:
    """Where `spec` (a local folder or a Hub repo id) can be loaded from, decided within seconds.

    An existing local folder is returned as is. A Hub id is returned as is when the Hub knows it
    (one request), or as its folder in the local Hugging Face cache when the Hub cannot be
    reached. Raises `SourceError` saying what is wrong: a path that does not exist, a repo the
    Hub does not have, or a repo that is not cached while the Hub is unreachable (and how to use
    a local folder instead).
    """
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SourceError(f"{spec} is a file; expected a checkpoint folder or a Hub repo id (ORG/NAME)")
        return spec
    if not is_hub_id(spec):
        raise SourceError(f"{spec}: no such folder (and not a Hub repo id, which looks like ORG/NAME)")

    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().model_info(spec, revision=revision, token=token, timeout=probe_timeout)
        return spec
    except GatedRepoError as e:
        raise SourceError(f"{spec} is a gated Hub repo: accept its terms on the Hub and log in (`hf auth login`): {e}") from e
    except RepositoryNotFoundError as e:
        raise SourceError(f"{spec}: no such folder, and the Hub has no model repo {spec} "
                          "(if it is private, log in with `hf auth login`)") from e
    except RevisionNotFoundError as e:
        raise SourceError(f"{spec}: the Hub repo has no revision {revision!r}") from e
    except OfflineModeIsEnabled:
        reason = "HF_HUB_OFFLINE is set"
    except Exception as e:  # noqa: BLE001 - no network, DNS, proxy, timeout, server error: the Hub is unreachable
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no answer'}"
    try:
        return snapshot_download(spec, revision=revision, local_files_only=True, token=token)
    except Exception as e:  # noqa: BLE001 - not (fully) in the cache
        raise SourceError(
            f"{spec} looks like a Hub repo id, but the Hub ({constants.ENDPOINT}) is unreachable ({reason}) and "
            f"{spec} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}). Download it where the Hub "
            f"is reachable (`hf download {spec} --local-dir DIR`) and pass the local folder DIR instead."
        ) from e


@dataclass(frozen=True)
class ResolvedSource:
    spec: str  # SRC as given
    path: Path  # local folder holding the checkpoint files
    repo_id: str | None  # Hub id, when known (Hub id given, or a folder inside the Hub cache)
    revision: str | None  # exact commit hash (Hub), git HEAD, or None
    fingerprint: str  # sha256 of config.json + the weight index / shard headers: identifies local copies

    @property
    def revision_label(self) -> str:
        """Human-readable exact provenance for model cards."""
        where = self.repo_id or str(self.path)
        rev = self.revision or f"local copy, content fingerprint sha256:{self.fingerprint[:16]}"
        return f"{where}@{rev}" if self.revision else f"{where} ({rev})"


def _git_head(path: Path) -> str | None:
    """The commit of a `git clone` of a Hub repo (no git binary needed)."""
    git = path / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = git / ref
            if ref_file.is_file():
                return ref_file.read_text().strip()
            packed = git / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
            return None
        return head if re.fullmatch(r"[0-9a-f]{40}", head) else None
    except OSError:
        return None


def fingerprint(path: Path) -> str:
    """Cheap, content-derived identity of a local checkpoint: config + index + shard headers."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors.index.json"):
        file = path / name
        if file.is_file():
            h.update(name.encode() + b"\0" + file.read_bytes())
    for file in sorted(path.glob("*.safetensors")):
        try:
            with open(file, "rb") as f:
                head = f.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else 0
                h.update(file.name.encode() + b"\0" + head + f.read(min(n, 100 * 1024 * 1024)))
            h.update(str(file.stat().st_size).encode())
        except OSError:
            pass
    return h.hexdigest()


def resolve_source(
    src: str | Path,
    *,
    revision: str | None = None,
    metadata_only: bool = False,
    token: str | bool | None = None,
) -> ResolvedSource:
    """A local folder is used as is; a Hub repo id is downloaded by `snapshot_download` (files
    already in the cache are reused), or taken from the cache while the Hub is unreachable.

    `metadata_only` fetches everything but the weight shards (for `--dry-run`).
    """
    spec = str(src)
    path = Path(locate_checkpoint(spec, revision=revision, token=token)).expanduser()
    if path.is_dir():  # a local folder, or the cached copy of a Hub repo while the Hub is unreachable
        path = path.resolve()
        m = _SNAPSHOT.search(path.as_posix())
        if m:  # a folder inside the Hub cache: keep the exact provenance
            repo_id, rev = f"{m['org']}/{m['name']}", m["commit"]
        else:
            repo_id, rev = None, _git_head(path)
        return ResolvedSource(spec, path, repo_id, rev, fingerprint(path))

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        folder = snapshot_download(
            spec,
            revision=revision,
            allow_patterns=METADATA_ALLOW_PATTERNS if metadata_only else SOURCE_ALLOW_PATTERNS,
            token=token,
        )
    except LocalEntryNotFoundError as e:
        raise SourceError(f"SRC {spec!r} could not be downloaded from the Hub: {e}") from e
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise SourceError(f"SRC {spec!r}: {e}") from e
    folder = Path(folder)
    m = _SNAPSHOT.search(folder.as_posix())
    commit = m["commit"] if m else (revision if revision and re.fullmatch(r"[0-9a-f]{40}", revision) else None)
    return ResolvedSource(spec, folder, spec, commit, fingerprint(folder))


def read_source_card_license(path: Path) -> dict[str, str]:
    """license / license_name / license_link from the source README.md metadata, when present."""
    readme = path / "README.md"
    if not readme.is_file():
        return {}
    try:
        from huggingface_hub import ModelCard

        data = ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict()
    except Exception:  # a broken source card must not stop the split
        return {}
    return {k: data[k] for k in ("license", "license_name", "license_link") if data.get(k)}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, json.JSONDecodeError) as e:
        raise SourceError(f"cannot read {path}: {e}") from e
