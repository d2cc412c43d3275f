"""`EncoderOutput`: exactly what crosses the wire from an encoder rank to a language rank.

Hub remote code: imports only torch. Shape legend: B batch, S sequence length, N visual tokens
(all images and videos of the batch, in sequence order, row-major over (B, S)), K deepstack
levels, H language hidden size.

Row layout: `visual_embeds` (N, H) and `deepstack_visual_embeds` (K, N, H) may be two tensors, or
views of one token-major (N, 1+K, H) buffer (`visual_rows()`; made by `visual_rows_to_fields`):
the encoder produces the latter, so the rows of any token range are one contiguous block, which
the transfer sends as one message.
"""

from dataclasses import dataclass, fields, replace
from typing import Any

import torch


@dataclass
class EncoderOutput:
    input_ids: torch.Tensor  # (B, S) int64, placeholders where visual rows go
    position_ids: torch.Tensor  # (3, B, S) int64, M-RoPE (temporal, height, width)
    rope_deltas: torch.Tensor  # (B, 1) int64, decode position = t + rope_delta
    visual_embeds: torch.Tensor  # (N, H), only the rows of visual tokens
    deepstack_visual_embeds: torch.Tensor  # (K, N, H)
    attention_mask: torch.Tensor | None = None  # (B, S), 1 = real token, 0 = (left) padding
    image_token_id: int | None = None  # placeholder ids, so the rows can be checked against input_ids
    video_token_id: int | None = None

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def num_visual_tokens(self) -> int:
        return self.visual_embeds.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.visual_embeds.shape[-1]

    @property
    def num_deepstack_levels(self) -> int:
        return self.deepstack_visual_embeds.shape[0]

    def visual_rows(self) -> torch.Tensor | None:
        """The token-major (N, 1+K, H) tensor that `visual_embeds` is `[:, 0]` of and
        `deepstack_visual_embeds` is `[:, 1:]` (transposed) of, when they are such views; else None."""
        v, d = self.visual_embeds, self.deepstack_visual_embeds
        if v.ndim != 2 or d.ndim != 3 or v.dtype != d.dtype or v.device != d.device:
            return None
        (n, h), k = v.shape, d.shape[0]
        if tuple(d.shape[1:]) != (n, h) or n == 0 or h == 0:
            return None
        if v.stride(1) != 1 or (n > 1 and v.stride(0) != (1 + k) * h):
            return None
        if k and (d.untyped_storage().data_ptr() != v.untyped_storage().data_ptr()
                  or d.storage_offset() != v.storage_offset() + h or d.stride(2) != 1
                  or (k > 1 and d.stride(0) != h) or (n > 1 and d.stride(1) != (1 + k) * h)):
            return None
        return v.as_strided((n, 1 + k, h), ((1 + k) * h, h, 1))

    def token_major(self) -> "EncoderOutput":
        """This output with its rows in one token-major (N, 1+K, H) buffer (itself if they are)."""
        if self.num_visual_tokens == 0 or self.visual_rows() is not None:
            return self
        rows = torch.cat([self.visual_embeds[:, None], self.deepstack_visual_embeds.transpose(0, 1)], dim=1)
        visual, deepstack = visual_rows_to_fields(rows)
        return replace(self, visual_embeds=visual, deepstack_visual_embeds=deepstack)

    def visual_pos_mask(self) -> torch.Tensor:
        """(B, S) bool: True at image/video placeholder positions."""
        mask = placeholder_mask(self.input_ids, self.image_token_id, self.video_token_id)
        if mask is None:
            raise ValueError("EncoderOutput has no image_token_id/video_token_id to locate visual positions.")
        return mask

    def nbytes(self) -> int:
        """Bytes of tensor payload (what a transfer moves, excluding headers)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "EncoderOutput":
        """Move to `device`; `dtype` applies to the embeddings only (ids and positions stay int64).
        Token-major rows stay token-major."""
        rows = self.visual_rows()
        if rows is not None:
            visual, deepstack = visual_rows_to_fields(rows.to(device=device, dtype=dtype))
            embeds = {"visual_embeds": visual, "deepstack_visual_embeds": deepstack}
        else:
            embeds = {
                name: getattr(self, name).to(device=device, dtype=dtype)
                for name in ("visual_embeds", "deepstack_visual_embeds")
            }
        ints = {
            name: t.to(device) for name, t in self.tensors().items() if name not in embeds
        }
        return replace(self, **embeds, **ints)

    def lm_inputs(self) -> dict[str, Any]:
        """Keyword arguments for `Qwen3MoeForCausalLMWithDeepStack.forward` and `.generate`."""
        inputs = {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "rope_deltas": self.rope_deltas,
        }
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        if self.num_visual_tokens > 0:
            inputs["visual_embeds"] = self.visual_embeds
            inputs["deepstack_visual_embeds"] = self.deepstack_visual_embeds
        return inputs

    def validate(self, hidden_size: int | None = None, num_deepstack_levels: int | None = None) -> "EncoderOutput":
        """Check shapes, dtypes and internal consistency; raise ValueError naming the field."""
        if self.input_ids.ndim != 2:
            raise ValueError(f"EncoderOutput.input_ids must be (B, S), got shape {tuple(self.input_ids.shape)}.")
        b, s = self.input_ids.shape
        _expect(self.input_ids, "input_ids", (b, s), torch.int64)
        _expect(self.position_ids, "position_ids", (3, b, s), torch.int64)
        _expect(self.rope_deltas, "rope_deltas", (b, 1), torch.int64)
        if self.attention_mask is not None and tuple(self.attention_mask.shape) != (b, s):
            raise ValueError(
                f"EncoderOutput.attention_mask has shape {tuple(self.attention_mask.shape)}, expected ({b}, {s})."
            )
        if self.visual_embeds.ndim != 2:
            raise ValueError(f"EncoderOutput.visual_embeds must be (N, H), got {tuple(self.visual_embeds.shape)}.")
        n, h = self.visual_embeds.shape
        if self.deepstack_visual_embeds.ndim != 3 or tuple(self.deepstack_visual_embeds.shape[1:]) != (n, h):
            raise ValueError(
                f"EncoderOutput.deepstack_visual_embeds has shape {tuple(self.deepstack_visual_embeds.shape)}, "
                f"expected (K, {n}, {h}) to match visual_embeds (N={n}, H={h})."
            )
        if self.deepstack_visual_embeds.dtype != self.visual_embeds.dtype:
            raise ValueError(
                f"EncoderOutput.deepstack_visual_embeds dtype {self.deepstack_visual_embeds.dtype} differs from "
                f"visual_embeds dtype {self.visual_embeds.dtype}."
            )
        if hidden_size is not None and n > 0 and h != hidden_size:
            raise ValueError(f"EncoderOutput hidden size is {h}, the language model expects H={hidden_size}.")
        k = self.num_deepstack_levels
        if num_deepstack_levels is not None and n > 0 and k != num_deepstack_levels:
            raise ValueError(
                f"EncoderOutput carries K={k} deepstack levels, the language model expects K={num_deepstack_levels}."
            )
        if self.image_token_id is not None or self.video_token_id is not None:
            placeholders = int(self.visual_pos_mask().count_nonzero())
            if placeholders != n:
                raise ValueError(
                    f"EncoderOutput has {placeholders} image/video placeholder tokens in input_ids but "
                    f"{n} visual embedding rows; they must be equal."
                )
        return self


def visual_rows_to_fields(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1+K, H) token-major rows -> (`visual_embeds` (N, H), `deepstack_visual_embeds` (K, N, H)),
    both views of `rows` (which must be contiguous)."""
    return rows[:, 0], rows[:, 1:].transpose(0, 1)


def placeholder_mask(ids: torch.Tensor, image_token_id: int | None, video_token_id: int | None) -> torch.Tensor | None:
    """bool like `ids`: True at image/video placeholders (None when neither token id is set)."""
    mask = None
    for tid in (image_token_id, video_token_id):
        if tid is not None:
            hit = ids == tid
            mask = hit if mask is None else mask.logical_or_(hit)
    return mask


def _expect(t: torch.Tensor, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"EncoderOutput.{name} must be a tensor, got {type(t).__name__}.")
    if tuple(t.shape) != shape:
        raise ValueError(f"EncoderOutput.{name} has shape {tuple(t.shape)}, expected {shape}.")
    if t.dtype != dtype:
        raise ValueError(f"EncoderOutput.{name} has dtype {t.dtype}, expected {dtype}.")


__all__ = ["EncoderOutput"]
