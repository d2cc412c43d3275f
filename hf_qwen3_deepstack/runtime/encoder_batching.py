"""Batched vision on an encoder rank: the images and videos of several prompts in one vision-tower
call (the Qwen3-VL vision model takes items of different sizes through `grid_thw`), then each
prompt's `EncoderOutput` assembled from its own slice, exactly as encoding it alone would.

Shape legend: P patches (rows of `pixel_values`), I images, V videos.
"""

from __future__ import annotations

import torch

from hf_qwen3_deepstack.encoder_output import EncoderOutput

_IMAGES = ("pixel_values", "image_grid_thw")
_VIDEOS = ("pixel_values_videos", "video_grid_thw")


def patch_count(inputs) -> int:
    """Vision-tower rows (patches) a prompt's processor output feeds in."""
    return sum(int(inputs[k].shape[0]) for k in ("pixel_values", "pixel_values_videos") if inputs.get(k) is not None)


def encode_batch(encoder, prompts: list) -> list[EncoderOutput]:
    """EncoderOutputs of several processor outputs (one prompt each), with one vision-tower call."""
    if len(prompts) == 1:
        return [encoder.encode(**prompts[0])]
    for p in prompts:  # a prompt whose placeholders disagree with its grids fails before the batched call
        encoder.check_placeholders(p["input_ids"], p.get("attention_mask"), _token_types(encoder, p),
                                   p.get("image_grid_thw"), p.get("video_grid_thw"))
    batched = {}
    for pixels, grid in (_IMAGES, _VIDEOS):
        with_items = [p for p in prompts if p.get(grid) is not None]
        if with_items:
            batched[pixels] = torch.cat([p[pixels] for p in with_items])  # (P, C*T*p*p)
            batched[grid] = torch.cat([p[grid] for p in with_items])  # (I or V, 3)
    vision = encoder(**batched)
    outputs, taken = [], {"image": 0, "video": 0}
    for p in prompts:
        part = {}
        for kind, grid in (("image", "image_grid_thw"), ("video", "video_grid_thw")):
            n = 0 if p.get(grid) is None else int(p[grid].shape[0])
            embeds, deepstack = getattr(vision, f"{kind}_embeds"), getattr(vision, f"{kind}_deepstack_embeds")
            a = taken[kind]
            part[f"{kind}_embeds"] = embeds[a:a + n] if n else None
            part[f"{kind}_deepstack_embeds"] = deepstack[a:a + n] if n else None
            taken[kind] = a + n
        outputs.append(encoder.encode(**p, vision_output=type(vision)(**part)))
    return outputs


def _token_types(encoder, prompt):
    types = prompt.get("mm_token_type_ids")
    ids = torch.as_tensor(prompt["input_ids"])
    return encoder.token_types(ids) if types is None else torch.as_tensor(types).view_as(ids)
