"""Batched vision on an encoder rank: the images and videos of several prompts in one vision-tower
call (the Qwen3-VL vision model takes items of different sizes through `grid_thw`), then each
prompt's `EncoderOutput` assembled from its own slice, exactly as encoding it alone would.

An optional `VisionCache` keeps the vision-tower output of recent items (an image, or a video),
keyed by a hash of the item's processed pixels and grid, which the processor derives from the
image or frame bytes and its settings: a chat that sends the same image again skips the tower.

Shape legend: P patches (rows of `pixel_values`), H hidden size, K deepstack levels, n an item's
visual tokens.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch

from hf_qwen3_deepstack.encoder_output import EncoderOutput
from hf_qwen3_deepstack.modeling_encoder_only import EncoderOnlyOutput

KINDS = (("image", "pixel_values", "image_grid_thw"), ("video", "pixel_values_videos", "video_grid_thw"))


def patch_count(inputs) -> int:
    """Vision-tower rows (patches) a prompt's processor output feeds in."""
    return sum(int(inputs[k].shape[0]) for _, k, _ in KINDS if inputs.get(k) is not None)


class VisionCache:
    """LRU of vision-tower outputs per item, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
        return hit

    def put(self, key: str, embeds: torch.Tensor, deepstack: torch.Tensor) -> None:
        size = embeds.nbytes + deepstack.nbytes
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = (embeds, deepstack)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (e, d) = self._items.popitem(last=False)
            self.bytes -= e.nbytes + d.nbytes


@dataclass
class _Item:
    prompt: int
    kind: str
    key: str | None
    pixels: torch.Tensor  # (P_item, C*T*p*p)
    grid: torch.Tensor  # (1, 3)
    out: tuple[torch.Tensor, torch.Tensor] | None = None  # (n, H), (K, n, H)


def _items(prompts: list, hashed: bool) -> list[_Item]:
    items = []
    for i, p in enumerate(prompts):
        for kind, pixels_key, grid_key in KINDS:
            grid = p.get(grid_key)
            if grid is None:
                continue
            rows = grid.prod(-1).tolist()
            for pixels, g in zip(torch.split(p[pixels_key], rows), grid.split(1)):
                key = None
                if hashed:
                    h = hashlib.blake2b(digest_size=16)
                    h.update(kind.encode())
                    h.update(g.cpu().numpy().tobytes())
                    h.update(pixels.detach().cpu().contiguous().numpy().tobytes())
                    key = h.hexdigest()
                items.append(_Item(i, kind, key, pixels, g))
    return items


def encode_batch(encoder, prompts: list, cache: VisionCache | None = None) -> tuple[list[EncoderOutput], int, int]:
    """EncoderOutputs of several processor outputs (one prompt each) with at most one vision-tower
    call; returns (outputs, cache hits, cache misses)."""
    for p in prompts:  # a prompt whose placeholders disagree with its grids fails before the batched call
        encoder.check_placeholders(p["input_ids"], p.get("attention_mask"), _token_types(encoder, p),
                                   p.get("image_grid_thw"), p.get("video_grid_thw"))
    items = _items(prompts, hashed=cache is not None)
    hits = 0
    for item in items:
        if cache is not None and (found := cache.get(item.key)) is not None:
            item.out, hits = found, hits + 1
    todo = [it for it in items if it.out is None]
    if todo:
        batched = {}
        for kind, pixels_key, grid_key in KINDS:
            mine = [it for it in todo if it.kind == kind]
            if mine:
                batched[pixels_key] = torch.cat([it.pixels for it in mine])  # (P, C*T*p*p)
                batched[grid_key] = torch.cat([it.grid for it in mine])  # (items, 3)
        vision = encoder(**batched)
        for kind, _, _ in KINDS:
            mine = [it for it in todo if it.kind == kind]
            for it, embeds, deepstack in zip(mine, getattr(vision, f"{kind}_embeds") or (),
                                             getattr(vision, f"{kind}_deepstack_embeds") or ()):
                it.out = (embeds, deepstack)
                if cache is not None:
                    cache.put(it.key, embeds, deepstack)
    outputs = []
    for i, p in enumerate(prompts):
        part = {}
        for kind, _, _ in KINDS:
            mine = [it.out for it in items if it.prompt == i and it.kind == kind]
            part[f"{kind}_embeds"] = tuple(e for e, _ in mine) if mine else None
            part[f"{kind}_deepstack_embeds"] = tuple(d for _, d in mine) if mine else None
        outputs.append(encoder.encode(**p, vision_output=EncoderOnlyOutput(**part)))
    return outputs, hits, len(todo) if cache is not None else 0


def _token_types(encoder, prompt):
    types = prompt.get("mm_token_type_ids")
    ids = torch.as_tensor(prompt["input_ids"])
    return encoder.token_types(ids) if types is None else torch.as_tensor(types).view_as(ids)
