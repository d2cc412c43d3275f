"""How an `EncoderOutput` is cut into chunks (sender) and put back together (receiver).

Chunks cut the flattened (B*S) token order, so a chunk may straddle two sequences of a batch.
Visual rows are stored in that same order, hence the visual rows of tokens [o, o+c) are one row
range [r, r+n) of the token-major (N, 1+K, H) rows: a chunk's rows are one contiguous block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..encoder_output import EncoderOutput, placeholder_mask, visual_rows_to_fields
from .protocol import (
    CODE_DTYPES, EMBED_DTYPES, FLAG_CUDA, FLAG_FIRST, FLAG_LAST, KIND_CHUNK, MASK_DTYPES, MAX_HIDDEN, MAX_LEVELS,
    NONE_ID, ChunkHeader, TransferError, dtype_code, header_message)


def token_id(v: int) -> int | None:
    """A header's image/video token id field as EncoderOutput holds it (NONE_ID -> None)."""
    return None if v == NONE_ID else v


@dataclass
class SendPlan:
    """Flat views of one request, made once at `isend`. T = B*S."""

    output: EncoderOutput
    ids: torch.Tensor  # (T,) int64
    pos: torch.Tensor  # (3, T) int64
    mask: torch.Tensor | None  # (T,) int64, the wire form of any mask dtype
    rope: torch.Tensor  # (B,) int64
    rows: torch.Tensor  # (N, 1+K, H) token-major, contiguous
    cuda: bool = False  # the rows travel as CUDA tensors (set by the sender)
    _vis_cumsum: torch.Tensor | None = None  # visual tokens up to each flat position (lazy)
    _rows_at: dict[int, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.ids.numel()

    @classmethod
    def build(cls, out: EncoderOutput) -> "SendPlan":
        out.validate()
        if out.visual_embeds.dtype not in EMBED_DTYPES:
            raise TransferError(f"visual_embeds dtype {out.visual_embeds.dtype} is not transferable", None, "embed_dtype")
        if out.attention_mask is not None and out.attention_mask.dtype not in MASK_DTYPES:
            raise TransferError(f"attention_mask dtype {out.attention_mask.dtype} is not transferable", None, "mask_dtype")
        if out.input_ids.numel() == 0:
            raise TransferError("EncoderOutput has no tokens", None, "total_tokens")
        if out.num_visual_tokens and out.image_token_id is None and out.video_token_id is None:
            raise TransferError("EncoderOutput has visual rows but no image/video token id", None, "image_token_id")
        if not (out.hidden_size <= MAX_HIDDEN and out.num_deepstack_levels <= MAX_LEVELS):
            raise TransferError(f"H={out.hidden_size} or K={out.num_deepstack_levels} is over the transfer's "
                                f"limits ({MAX_HIDDEN}, {MAX_LEVELS})", None, "hidden_size")
        rows = out.visual_rows()
        if rows is None and out.num_visual_tokens:  # not token-major: interleave once (a copy)
            rows = out.token_major().visual_rows()
        elif rows is None:
            rows = out.visual_embeds.new_empty(0, 1 + out.num_deepstack_levels, out.hidden_size)
        b, s = out.input_ids.shape
        mask = None if out.attention_mask is None else out.attention_mask.reshape(-1).to(torch.int64)
        return cls(output=out, ids=out.input_ids.reshape(-1).contiguous(), pos=out.position_ids.reshape(3, b * s),
                   mask=mask, rope=out.rope_deltas.reshape(-1).contiguous(), rows=rows)

    def ints_to_host(self) -> None:
        """CUDA data: the int tensors, which travel in host header messages, copied once to the host."""
        self.ids, self.pos, self.rope = self.ids.cpu(), self.pos.cpu(), self.rope.cpu()
        self.mask = None if self.mask is None else self.mask.cpu()

    def rows_before(self, t: int) -> int:
        """Visual rows carried by the flat tokens [0, t)."""
        if t <= 0:
            return 0
        if t >= self.total:
            return self.output.num_visual_tokens
        if t not in self._rows_at:
            if self._vis_cumsum is None:
                out = self.output
                is_vis = placeholder_mask(self.ids, out.image_token_id, out.video_token_id)
                self._vis_cumsum = torch.zeros_like(self.ids) if is_vis is None else torch.cumsum(is_vis, 0)
            self._rows_at[t] = int(self._vis_cumsum[t - 1])
        return self._rows_at[t]

    def header(self, request_id: int, offset: int, capacity: int) -> ChunkHeader:
        """Header of the chunk at `offset` of a request cut into `capacity` tokens."""
        out = self.output
        count = min(capacity, self.total - offset)
        r0, r1 = self.rows_before(offset), self.rows_before(offset + count)
        flags = (FLAG_FIRST * (offset == 0)) | (FLAG_LAST * (offset + count >= self.total)) | (FLAG_CUDA * self.cuda)
        h = ChunkHeader(
            kind=KIND_CHUNK, request_id=request_id, token_offset=offset, token_count=count,
            total_tokens=self.total, batch_size=out.batch_size, seq_len=out.seq_len,
            num_visual=out.num_visual_tokens, row_offset=r0, row_count=r1 - r0,
            num_deepstack_levels=out.num_deepstack_levels, hidden_size=out.hidden_size,
            embed_dtype=dtype_code(out.visual_embeds.dtype),
            mask_dtype=NONE_ID if out.attention_mask is None else dtype_code(out.attention_mask.dtype),
            image_token_id=NONE_ID if out.image_token_id is None else out.image_token_id,
            video_token_id=NONE_ID if out.video_token_id is None else out.video_token_id,
            flags=flags, capacity=capacity)
        h.int_bytes = 8 * int_numel(h)
        h.embed_bytes = embed_nbytes(h)
        if h.row_count and not self.cuda:
            h.rows_tail = int(self.rows[r1 - 1].reshape(-1).view(torch.uint8)[-1])
        return h

    def header_message(self, h: ChunkHeader, max_bytes: int) -> torch.Tensor:
        """Header `h` with the chunk's int section; without it when the message would be longer
        than the receiver accepts (it then rejects the header, which is out of its range)."""
        o, c = h.token_offset, h.token_count
        ints = [self.rope] if h.first else []
        ints += [self.ids[o : o + c], self.pos[:, o : o + c].reshape(-1)]
        if self.mask is not None:
            ints.append(self.mask[o : o + c])
        msg = header_message(h, ints)
        return msg if msg.numel() <= max_bytes else header_message(h)

    def rows_message(self, h: ChunkHeader) -> torch.Tensor | None:
        """The (n, 1+K, H) rows of chunk `h`, one contiguous block; None without rows."""
        return self.rows[h.row_offset : h.row_offset + h.row_count] if h.row_count else None


def int_numel(h: ChunkHeader) -> int:
    c = h.token_count
    return (h.batch_size if h.first else 0) + 4 * c + (c if h.mask_dtype != NONE_ID else 0)


def row_nbytes(h: ChunkHeader) -> int:
    return (1 + h.num_deepstack_levels) * h.hidden_size * CODE_DTYPES[h.embed_dtype].itemsize


def embed_nbytes(h: ChunkHeader) -> int:
    return h.row_count * row_nbytes(h)


@dataclass
class IntParts:
    rope: torch.Tensor | None  # (B,) on the first chunk
    ids: torch.Tensor  # (c,)
    pos: torch.Tensor  # (3, c)
    mask: torch.Tensor | None  # (c,) int64 wire form


def split_ints(ints: torch.Tensor, h: ChunkHeader) -> IntParts:
    c, at, rope = h.token_count, 0, None
    if h.first:
        rope, at = ints[: h.batch_size], h.batch_size
    mask = ints[at + 4 * c : at + 5 * c] if h.mask_dtype != NONE_ID else None
    return IntParts(rope, ints[at : at + c], ints[at + c : at + 4 * c].view(3, c), mask)


def count_visual(ids: torch.Tensor, h: ChunkHeader) -> int:
    flags = placeholder_mask(ids, token_id(h.image_token_id), token_id(h.video_token_id))
    return 0 if flags is None else int(flags.count_nonzero())


def new_result(h: ChunkHeader, device: torch.device, buffer: torch.Tensor | None, slack: int
               ) -> tuple[EncoderOutput, torch.Tensor]:
    """The EncoderOutput that first header `h` announces, and the uint8 buffer its token-major
    rows are views of (`buffer` when large enough, e.g. a recycled one; `slack` bytes past the rows)."""
    b, s, n, k, hid = h.batch_size, h.seq_len, h.num_visual, h.num_deepstack_levels, h.hidden_size
    dtype = CODE_DTYPES[h.embed_dtype]
    nbytes = n * row_nbytes(h)
    slack = slack if n else 0
    if buffer is None or buffer.numel() < nbytes + slack:
        buffer = torch.empty(nbytes + slack, dtype=torch.uint8, device=device)
    visual, deepstack = visual_rows_to_fields(buffer[:nbytes].view(dtype).view(n, 1 + k, hid))
    mask = None if h.mask_dtype == NONE_ID else torch.empty(b, s, dtype=CODE_DTYPES[h.mask_dtype], device=device)
    out = EncoderOutput(
        input_ids=torch.empty(b, s, dtype=torch.int64, device=device),
        position_ids=torch.empty(3, b, s, dtype=torch.int64, device=device),
        rope_deltas=torch.empty(b, 1, dtype=torch.int64, device=device),
        visual_embeds=visual, deepstack_visual_embeds=deepstack, attention_mask=mask,
        image_token_id=token_id(h.image_token_id), video_token_id=token_id(h.video_token_id))
    return out, buffer


def scatter_ints(parts: IntParts, h: ChunkHeader, out: EncoderOutput) -> None:
    """Copy a chunk's int section into the assembled result."""
    o, c = h.token_offset, h.token_count
    if parts.rope is not None:
        out.rope_deltas.view(-1).copy_(parts.rope)
    out.input_ids.view(-1)[o : o + c].copy_(parts.ids)
    out.position_ids.view(3, -1)[:, o : o + c].copy_(parts.pos)
    if parts.mask is not None:
        out.attention_mask.view(-1)[o : o + c].copy_(parts.mask)
