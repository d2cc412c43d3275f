"""Tiny checkpoints and hand-built multimodal inputs shared by the model tests.

Inputs are built without a processor so the model tests do not depend on one: placeholder runs
follow exactly the layout Qwen3-VL's processor writes (one run per image, one run per video
frame group, each wrapped in vision_start/vision_end and separated by text).
"""

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hf_qwen3_deepstack.tiny_checkpoint.model import write_tiny_text_checkpoint, write_tiny_vl_checkpoint
from hf_qwen3_deepstack.tiny_checkpoint.special_tokens import (
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    VIDEO_TOKEN_ID,
    VISION_END_TOKEN_ID,
    VISION_START_TOKEN_ID,
)

PATCH_DIM = 3 * 2 * 16 * 16  # channels * temporal_patch * patch * patch
MERGE = 2


def vl_checkpoint(root: Path, name: str = "vl-hub", **kwargs) -> Path:
    """Cached under `root`: a sharded tiny Qwen3-VL-MoE checkpoint (default: Hub expert layout)."""
    path = root / name
    if not (path / "config.json").exists():
        kwargs.setdefault("max_shard_size", "300KB")
        write_tiny_vl_checkpoint(path, seed=0, **kwargs)
    return path


def text_checkpoint(root: Path, name: str = "text-moe", **kwargs) -> Path:
    path = root / name
    if not (path / "config.json").exists():
        write_tiny_text_checkpoint(path, seed=1, **kwargs)
    return path


def _text(n: int, start: int) -> list[int]:
    return [(start + 7 * i) % 400 + 10 for i in range(n)]


def prompt(images=(), videos=(), text_len: int = 5, seed: int = 0) -> dict:
    """One prompt: text, then each image, then each video, then text. Grids are (t, h, w) in patches."""
    g = torch.Generator().manual_seed(seed)
    ids = _text(text_len, seed)
    for t, h, w in images:
        ids += [VISION_START_TOKEN_ID] + [IMAGE_TOKEN_ID] * (t * h * w // MERGE**2) + [VISION_END_TOKEN_ID]
        ids += _text(2, seed + 1)
    for t, h, w in videos:
        for frame in range(t):
            ids += _text(2, seed + 10 + frame)  # stands for the "<t seconds>" timestamp text
            ids += [VISION_START_TOKEN_ID] + [VIDEO_TOKEN_ID] * (h * w // MERGE**2) + [VISION_END_TOKEN_ID]
    ids += _text(text_len, seed + 3)
    out = {"input_ids": torch.tensor([ids])}
    if images:
        grid = torch.tensor(images)
        out["image_grid_thw"] = grid
        out["pixel_values"] = torch.randn(int(grid.prod(-1).sum()), PATCH_DIM, generator=g)
    if videos:
        grid = torch.tensor(videos)
        out["video_grid_thw"] = grid
        out["pixel_values_videos"] = torch.randn(int(grid.prod(-1).sum()), PATCH_DIM, generator=g)
    return out


def with_token_types(inputs: dict) -> dict:
    ids = inputs["input_ids"]
    types = torch.zeros_like(ids, dtype=torch.int32)
    types[ids == IMAGE_TOKEN_ID] = 1
    types[ids == VIDEO_TOKEN_ID] = 2
    return {**inputs, "mm_token_type_ids": types}


def left_padded_batch(*prompts: dict) -> dict:
    """Batch prompts with left padding, as the processor does for generation."""
    longest = max(p["input_ids"].shape[1] for p in prompts)
    ids, mask = [], []
    for p in prompts:
        pad = longest - p["input_ids"].shape[1]
        ids.append(torch.cat([torch.full((1, pad), PAD_TOKEN_ID), p["input_ids"]], dim=1))
        mask.append(torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones_like(p["input_ids"])], dim=1))
    batch = {"input_ids": torch.cat(ids), "attention_mask": torch.cat(mask)}
    for key in ("image_grid_thw", "pixel_values", "video_grid_thw", "pixel_values_videos"):
        parts = [p[key] for p in prompts if key in p]
        if parts:
            batch[key] = torch.cat(parts)
    return batch


def reshard_by_half(src: Path, dst: Path) -> dict[str, Path]:
    """Copy a full checkpoint as two shards, vision and language, with an index. Returns the shard paths."""
    dst.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for file in src.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    shards = {"vision": "model-vision.safetensors", "language": "model-language.safetensors"}
    halves = {
        "vision": {k: v for k, v in tensors.items() if k.startswith("model.visual.")},
        "language": {k: v for k, v in tensors.items() if not k.startswith("model.visual.")},
    }
    weight_map = {}
    for half, part in halves.items():
        save_file(part, dst / shards[half], metadata={"format": "pt"})
        weight_map.update({k: shards[half] for k in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (dst / "config.json").write_text((src / "config.json").read_text())
    return {half: dst / name for half, name in shards.items()}


def corrupt_tensor_data(file: Path) -> None:
    """Overwrite every byte after the safetensors header with 0xFF (NaN in any float dtype)."""
    raw = bytearray(file.read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    start = 8 + header_len
    raw[start:] = b"\xff" * (len(raw) - start)
    file.write_bytes(bytes(raw))


# The multimodal inputs every parity test checks the split against transformers with (fresh tensors per call).
PARITY_CASES = {
    "one_image": lambda: prompt(images=[(1, 4, 6)]),
    "two_images_of_different_sizes": lambda: prompt(images=[(1, 4, 4), (1, 6, 8)], seed=1),
    "video_with_three_temporal_groups": lambda: prompt(videos=[(3, 4, 4)], seed=2),
    "image_and_video": lambda: prompt(images=[(1, 6, 4)], videos=[(2, 4, 6)], seed=3),
    "text_only": lambda: prompt(text_len=9, seed=4),
    "left_padded_batch_of_two": lambda: left_padded_batch(
        prompt(images=[(1, 4, 4)], text_len=3, seed=5), prompt(images=[(1, 6, 6)], videos=[(2, 4, 4)], seed=6)
    ),
}


def real_positions(inputs: dict) -> torch.Tensor:
    """(B, S) bool: the positions that are not left padding."""
    mask = inputs.get("attention_mask")
    return torch.ones_like(inputs["input_ids"], dtype=torch.bool) if mask is None else mask.bool()
