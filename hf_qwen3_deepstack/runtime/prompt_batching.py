"""Several prompts through the processor in one call, split back into what each prompt gives alone.

The processor's per-call overhead (keyword merging and validation, template rendering set-up) is
about as large as its work on a small image, so an encoder rank prepares the requests that are
waiting together. Only prompts of text and images are batched: transformers' processor does not
take a batch of conversations with videos. Anything the split does not know, and any prompt that
fails in a batch, falls back to one call per prompt, so a bad request still fails alone.

Shape legend: B prompts, L padded length, P patches (rows of `pixel_values`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import BatchFeature

from .models import build_prompt

PER_TOKEN = ("input_ids", "attention_mask", "mm_token_type_ids")  # (B, L), left-padded
PER_IMAGE = ("pixel_values", "image_grid_thw")  # (P, D) and (images, 3), prompts' images in order


def build_prompts(processor, conversations: list[list[dict[str, Any]]]) -> list[BatchFeature | Exception]:
    """`build_prompt` of each conversation (or the exception it raised), with one processor call for
    all those made of text and images."""
    results: list[BatchFeature | Exception | None] = [None] * len(conversations)
    batchable = [i for i, c in enumerate(conversations) if not _has_video(c)]
    if len(batchable) > 1:
        try:
            for i, inputs in zip(batchable, _batched(processor, [conversations[i] for i in batchable])):
                results[i] = inputs
        except Exception:  # noqa: BLE001 - one of them is bad: each is retried alone below
            pass
    for i, conversation in enumerate(conversations):
        if results[i] is None:
            try:
                results[i] = build_prompt(processor, conversation)
            except Exception as e:  # noqa: BLE001 - this request's error, reported for it alone
                results[i] = e
    return results


def _has_video(conversation: list[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) and any(p.get("type") == "video" for p in m["content"])
               for m in conversation)


def _image_count(conversation: list[dict[str, Any]]) -> int:
    return sum(p.get("type") == "image" for m in conversation if isinstance(m.get("content"), list)
               for p in m["content"])


def _batched(processor, conversations: list[list[dict[str, Any]]]) -> list[BatchFeature]:
    batch = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                          return_dict=True, return_tensors="pt", processor_kwargs={"padding": True})
    unknown = set(batch) - set(PER_TOKEN) - set(PER_IMAGE)
    if unknown or batch["input_ids"].shape[0] != len(conversations):
        raise ValueError(f"unexpected processor outputs {sorted(unknown)}")
    keep = batch["attention_mask"].bool()  # (B, L)
    images = [_image_count(c) for c in conversations]
    grids = batch.get("image_grid_thw", torch.zeros(0, 3, dtype=torch.long))
    if sum(images) != grids.shape[0]:
        raise ValueError(f"{grids.shape[0]} image grids for {sum(images)} images")
    patches = grids.prod(-1).tolist()  # per image
    out, image, row = [], 0, 0
    for b, count in enumerate(images):
        data = {k: batch[k][b][keep[b]][None] for k in PER_TOKEN if k in batch}
        if count:
            n = sum(patches[image:image + count])
            data["pixel_values"] = batch["pixel_values"][row:row + n]
            data["image_grid_thw"] = grids[image:image + count]
            image, row = image + count, row + n
        out.append(BatchFeature(data))
    return out
