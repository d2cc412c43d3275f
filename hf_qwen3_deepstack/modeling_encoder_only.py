"""What the vision halves of Qwen3-VL and Qwen3-VL-MoE share: transformers' vision tower run per
image and video, and `encode()`, which turns processor output into an `EncoderOutput` (visual rows in
sequence order, deepstack rows, M-RoPE positions from transformers' own `get_rope_index`).
Hub remote code: imports only torch and transformers.

A family's encoder is `class X(EncoderOnlyMixin, LoadsOwnShards, <transformers VL PreTrainedModel>)`
that builds `self.visual` (transformers' vision model) and binds `get_vision_position_ids` /
`get_rope_index` from transformers' VL model.

Shape legend: B batch, S sequence, P patches, N visual tokens (= P / merge**2), K deepstack levels,
H language hidden size.
"""

import itertools
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import ModelOutput

from .encoder_output import EncoderOutput, visual_rows_to_fields

TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids values, as transformers' processor writes them


@dataclass
class EncoderOnlyOutput(ModelOutput):
    image_embeds: tuple[torch.Tensor, ...] | None = None  # per image (n_i, H)
    image_deepstack_embeds: tuple[torch.Tensor, ...] | None = None  # per image (K, n_i, H)
    video_embeds: tuple[torch.Tensor, ...] | None = None  # per video (n_v, H), all temporal groups
    video_deepstack_embeds: tuple[torch.Tensor, ...] | None = None  # per video (K, n_v, H)


class EncoderOnlyMixin:
    base_model_prefix = "visual"
    main_input_name = "pixel_values"
    input_modalities = ("image", "video")

    @staticmethod
    def is_own_key(key: str) -> bool:  # checkpoint keys this half reads (full checkpoint or own folder)
        return key.startswith(("model.visual.", "visual."))

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,  # (P_img, C*T*p*p)
        image_grid_thw: torch.LongTensor | None = None,  # (num_images, 3)
        pixel_values_videos: torch.Tensor | None = None,  # (P_vid, C*T*p*p)
        video_grid_thw: torch.LongTensor | None = None,  # (num_videos, 3)
        **kwargs,
    ) -> EncoderOnlyOutput:
        image_embeds, image_deepstack = self._embed(pixel_values, image_grid_thw, "pixel_values", "image_grid_thw")
        video_embeds, video_deepstack = self._embed(
            pixel_values_videos, video_grid_thw, "pixel_values_videos", "video_grid_thw"
        )
        return EncoderOnlyOutput(image_embeds, image_deepstack, video_embeds, video_deepstack)

    def _embed(self, pixels, grid_thw, pixels_name: str, grid_name: str):
        if pixels is None and grid_thw is None:
            return None, None
        if pixels is None or grid_thw is None:
            raise ValueError(f"{pixels_name} and {grid_name} must be given together.")
        grid_thw = torch.as_tensor(grid_thw)
        patches = int(grid_thw.prod(-1).sum())
        if grid_thw.ndim != 2 or grid_thw.shape[-1] != 3 or pixels.ndim != 2 or pixels.shape[0] != patches:
            raise ValueError(
                f"{grid_name} {grid_thw.tolist()} describes {patches} patches, but {pixels_name} has shape "
                f"{tuple(pixels.shape)}; expected ({patches}, channels*temporal_patch*patch*patch)."
            )
        merge = self.config.spatial_merge_size
        if bool((grid_thw[:, 1:] % merge).any()):
            raise ValueError(f"{grid_name} {grid_thw.tolist()}: height and width must be multiples of {merge}.")
        out = self.visual(pixels.to(self.visual.dtype), grid_thw=grid_thw.to(pixels.device), return_dict=True)
        sizes = (grid_thw.prod(-1) // merge**2).tolist()
        embeds = torch.split(out.pooler_output, sizes)  # per item (n_i, H)
        deepstack = torch.stack(out.deepstack_features).split(sizes, dim=1)  # per item (K, n_i, H)
        return embeds, deepstack

    @torch.no_grad()
    def encode(
        self,
        input_ids: torch.LongTensor,  # (B, S)
        attention_mask: torch.Tensor | None = None,  # (B, S)
        mm_token_type_ids: torch.Tensor | None = None,  # (B, S): 0 text, 1 image, 2 video
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        vision_output: EncoderOnlyOutput | None = None,
        **unused,
    ) -> EncoderOutput:
        """Everything the language side needs, from exactly what the Qwen3-VL processor returns.
        `vision_output`: this prompt's items already through the vision tower (e.g. as part of a
        larger batch), instead of running it here."""
        input_ids = torch.as_tensor(input_ids)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if mm_token_type_ids is None:
            mm_token_type_ids = self.token_types(input_ids)
        mm_token_type_ids = torch.as_tensor(mm_token_type_ids).view_as(input_ids)
        self.check_placeholders(input_ids, attention_mask, mm_token_type_ids, image_grid_thw, video_grid_thw)

        out = vision_output
        if out is None:
            out = self(pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
        visual_embeds, deepstack = self.rows_in_sequence_order(mm_token_type_ids, attention_mask, out)
        if image_grid_thw is None and video_grid_thw is None:  # text only: equal components, delta 0
            position_ids, rope_deltas = self.text_positions(input_ids, attention_mask)
        else:
            position_ids, rope_deltas = self.get_rope_index(
                input_ids,
                mm_token_type_ids=mm_token_type_ids,
                image_grid_thw=image_grid_thw,
                video_grid_thw=video_grid_thw,
                attention_mask=attention_mask,
            )
        return EncoderOutput(
            input_ids=input_ids.long(),
            position_ids=position_ids.long(),
            rope_deltas=rope_deltas.long().view(-1, 1),
            visual_embeds=visual_embeds,
            deepstack_visual_embeds=deepstack,
            attention_mask=attention_mask,
            image_token_id=self.config.image_token_id,
            video_token_id=self.config.video_token_id,
        ).validate()

    def token_types(self, input_ids: torch.Tensor) -> torch.Tensor:
        types = torch.zeros_like(input_ids, dtype=torch.int32)
        types[input_ids == self.config.image_token_id] = IMAGE
        types[input_ids == self.config.video_token_id] = VIDEO
        return types

    @staticmethod
    def text_positions(input_ids, attention_mask):
        if attention_mask is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        else:
            positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        deltas = torch.zeros(input_ids.shape[0], 1, dtype=torch.long, device=input_ids.device)
        return positions.expand(3, -1, -1).clone(), deltas

    def check_placeholders(self, input_ids, attention_mask, mm_token_type_ids, image_grid_thw, video_grid_thw):
        """Each run of placeholders must match its grid: one run per image, one per video frame group."""
        merge = self.config.spatial_merge_size
        expected = {
            IMAGE: [] if image_grid_thw is None else [int(t * h * w) // merge**2 for t, h, w in image_grid_thw.tolist()],
            VIDEO: [] if video_grid_thw is None else [
                int(h * w) // merge**2 for t, h, w in video_grid_thw.tolist() for _ in range(int(t))
            ],
        }
        found = {IMAGE: [], VIDEO: []}
        for b in range(input_ids.shape[0]):
            types = mm_token_type_ids[b]
            if attention_mask is not None:
                types = types[attention_mask[b].bool()]
            for kind, run in itertools.groupby(types.tolist()):
                if kind in found:
                    found[kind].append(len(list(run)))
        for kind, name, grid in ((IMAGE, "image", "image_grid_thw"), (VIDEO, "video", "video_grid_thw")):
            if found[kind] != expected[kind]:
                raise ValueError(
                    f"{name} placeholder tokens do not match {grid}: input_ids hold runs of {found[kind]} {name} "
                    f"tokens ({sum(found[kind])} in all), the grids expect {expected[kind]} "
                    f"({sum(expected[kind])} in all; tokens = t*h*w/{merge**2} per {name}, videos one run per frame)."
                )

    def rows_in_sequence_order(self, mm_token_type_ids, attention_mask, out: EncoderOnlyOutput):
        """Image and video rows interleaved as their placeholders appear: (N, H) and (K, N, H), views
        of one token-major (N, 1+K, H) buffer (a token range's rows are one block on the wire)."""
        types = mm_token_type_ids if attention_mask is None else mm_token_type_ids * attention_mask.bool()
        types = types[types != TEXT]  # (N,) in row-major (B, S) order
        hidden, levels = self.config.text_hidden_size, self.config.num_deepstack_levels
        rows = torch.empty(types.shape[0], 1 + levels, hidden, dtype=self.dtype, device=self.device)
        visual, deepstack = visual_rows_to_fields(rows)
        for kind, rows, stacks in ((IMAGE, out.image_embeds, out.image_deepstack_embeds),
                                   (VIDEO, out.video_embeds, out.video_deepstack_embeds)):
            if rows is not None:
                where = (types == kind).to(self.device)
                visual[where] = torch.cat(rows).to(visual.dtype)
                deepstack[:, where] = torch.cat(stacks, dim=1).to(deepstack.dtype)
        return visual, deepstack



__all__ = ["EncoderOnlyMixin", "EncoderOnlyOutput"]
