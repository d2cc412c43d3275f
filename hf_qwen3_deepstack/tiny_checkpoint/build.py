"""The complete tiny Qwen3-VL-MoE (or dense Qwen3-VL) checkpoint (weights + processor files), and its cache.

- `write_tiny_checkpoint(path, seed=0, **model_kwargs)`: weights/config (`model.py`) + processor
  files (`processor.py`) + generation_config.json, written to a temp dir next to `path` and
  renamed into place (an existing `path` is replaced).
- `default_tiny_checkpoint(seed=0)`: built once and cached under `$HF_QWEN3_DEEPSTACK_CACHE`
  (or `~/.cache/hf_qwen3_deepstack`) as `tiny-v1-seed{seed}`; safe when processes race.
- `write_sample_images(dir)`: deterministic sample images and video frames for demo and tests.
- `load_processor(path)`: `AutoProcessor.from_pretrained(path)` that also works without
  torchvision (importing this module already installs that fallback, see `video.py`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from .model import write_tiny_vl_checkpoint
from .processor import write_tiny_processor
from .video import install as _install_video_fallback
from .video import load_processor  # noqa: F401  (re-exported: AutoProcessor that works without torchvision)

# Without torchvision, transformers cannot build any Qwen3-VL video processor and so
# `AutoProcessor.from_pretrained` fails; register our torch-only one (no-op with torchvision).
_install_video_fallback()

CACHE_ENV = "HF_QWEN3_DEEPSTACK_CACHE"
CACHE_VERSION = "tiny-v1"
COMPLETE_MARKER = ".complete"


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hf_qwen3_deepstack"


def _new_temp_dir(parent: Path, prefix: str) -> Path:
    """An empty folder with the umask's permissions (mkdtemp's are 0700)."""
    path = parent / f"{prefix}{uuid.uuid4().hex}"
    path.mkdir()
    return path


def _build_into(tmp: Path, seed: int, model_kwargs: dict) -> None:
    write_tiny_vl_checkpoint(tmp, seed, **model_kwargs)
    write_tiny_processor(tmp)  # also writes generation_config.json (overriding the model's)
    (tmp / COMPLETE_MARKER).write_text(f"{CACHE_VERSION} seed={seed}\n")


def write_tiny_checkpoint(path: str | Path, seed: int = 0, **model_kwargs) -> Path:
    """Write the complete tiny checkpoint to `path` and return it.

    `model_kwargs` go to `write_tiny_vl_checkpoint` (family, expert_layout, max_shard_size,
    tie_word_embeddings). The result loads with `Qwen3VLMoeForConditionalGeneration` (family "moe",
    the default) or `Qwen3VLForConditionalGeneration` ("dense") and
    `AutoProcessor` (without torchvision: `hf_qwen3_deepstack.tiny_checkpoint.video.load_processor`).
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_dir(path.parent, f".{path.name}.tmp-")
    try:
        _build_into(tmp, seed, model_kwargs)
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def default_tiny_checkpoint(seed: int = 0) -> Path:
    """The embedded default model: built on first use, then reused from the cache."""
    root = cache_root()
    path = root / f"{CACHE_VERSION}-seed{seed}"
    if (path / COMPLETE_MARKER).exists():
        return path
    root.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_dir(root, f".{path.name}.tmp-")
    try:
        _build_into(tmp, seed, {})
        try:
            tmp.rename(path)  # atomic; fails if a concurrent builder won (non-empty dir exists)
        except OSError:
            if not (path / COMPLETE_MARKER).exists():
                # a stale, incomplete directory (not created by our atomic rename): replace it
                stale = root / f".{path.name}.stale-{uuid.uuid4().hex}"
                try:
                    path.rename(stale)
                    shutil.rmtree(stale, ignore_errors=True)
                except OSError:
                    pass
                try:
                    tmp.rename(path)
                except OSError:
                    pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not (path / COMPLETE_MARKER).exists():
        raise RuntimeError(f"could not build the tiny checkpoint at {path}")
    return path


# (name, width, height) of the sample images; frames are 64x64.
SAMPLE_IMAGES = (("square_64x64.png", 64, 64), ("wide_96x64.png", 96, 64), ("landscape_128x96.png", 128, 96))
NUM_SAMPLE_FRAMES = 4


def _sample_image(width: int, height: int, index: int):
    """A deterministic picture: colour gradients plus a moving square (no RNG involved)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // max(width - 1, 1) + 40 * index) % 256
    g = (y * 255 // max(height - 1, 1) + 70 * index) % 256
    b = ((x + y) * 4 + 90 * index) % 256
    img = np.stack([r, g, b], axis=-1).astype(np.uint8)
    side = min(width, height) // 4
    x0 = (index * side) % max(width - side, 1)
    y0 = (index * side // 2) % max(height - side, 1)
    img[y0:y0 + side, x0:x0 + side] = (255, 255, 255)
    return Image.fromarray(img, "RGB")


def write_sample_images(directory: str | Path) -> list[Path]:
    """Write deterministic sample images to `directory` and return their paths:
    [square_64x64.png, wide_96x64.png, landscape_128x96.png, frame_0.png .. frame_3.png].
    The last four are the frames of a sample video (64x64 each: grid (2, 4, 4), 8 tokens)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, width, height) in enumerate(SAMPLE_IMAGES):
        paths.append(directory / name)
        _sample_image(width, height, i).save(paths[-1])
    for i in range(NUM_SAMPLE_FRAMES):
        paths.append(directory / f"frame_{i}.png")
        _sample_image(64, 64, 10 + i).save(paths[-1])
    return paths
