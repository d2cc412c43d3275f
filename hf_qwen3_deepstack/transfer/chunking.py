"""How an `EncoderOutput` is cut into token ranges and put back together.

Chunking is along the **flattened (B*S) token order** (row-major over batch, then sequence), so a
chunk may straddle two sequences of a batch. Visual rows are stored in that same order, hence the
visual rows of tokens [o, o+c) are one contiguous row range [r, r+n) of `visual_embeds` and of
every deepstack level: chunk i carries exactly the rows of its own tokens.

Per chunk, after the header, the data is (sizes derivable from the header alone):

    int section  int64[(B if first) + c + 3c + (c if mask)]   rope deltas | ids | positions | mask
    rows         (n, 1+K, H)  embed dtype   token-major: visual row, then its K deepstack rows,
                                            for the visual tokens [r, r+n) of the chunk

Token-major rows make any token range one contiguous block at both ends (see
`EncoderOutput.visual_rows`): the encoder produces them, the receiver's results hold them, and a
sender given (N, H) + (K, N, H) tensors interleaves them once per request.
Small chunks (`PACK_LIMIT`) travel as one packed uint8 message (one memcpy, fewer messages);
large ones as two, zero-copy from the sender's tensors into the receiver's: the int section, then
the rows. The receiver's staging buffer uses the same byte layout for both: int section at byte 0,
rows right after it. When the receiver accepts bytes after a header (gloo, `inline_bytes`), the
int section travels in the chunk header's message instead (`FLAG_INTS`) and the data is the rows
alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..encoder_output import EncoderOutput, placeholder_mask, visual_rows_to_fields
from .protocol import (
    CODE_DTYPES,
    EMBED_DTYPES,
    FLAG_FIRST,
    FLAG_CUDA,
    FLAG_INTS,
    FLAG_LAST,
    FLAG_PACKED,
    KIND_CHUNK,
    MASK_DTYPES,
    NONE_ID,
    ChunkHeader,
    TransferError,
    dtype_code,
)

PACK_LIMIT = 256 * 1024  # chunks with at most this many data bytes travel as one message
# A pushed request's chunks with more data than this are sent when pulled instead (`FLAG_PULLED`).
# Measured on gloo: a message posted before its receive arrives faster than a pull round trip plus
# a send into a posted receive at 256 KB (1.1 against 1.9 ms), as fast at 1 MB, slower at 2 MB (3.1
# against 1.9 ms); requests cut into ~1 MB chunks were slower pushed (4 MB in 4: 0.23-0.27x raw
# against 0.28-0.34x pulled, three paired runs).
PUSH_LIMIT = 512 * 1024


def _id(v: int | None) -> int:
    return NONE_ID if v is None else int(v)


def token_id(v: int) -> int | None:
    """A header's image/video token id field as EncoderOutput holds it (NONE_ID -> None)."""
    return None if v == NONE_ID else v


@dataclass
class SendPlan:
    """Flat views of one request, computed once at `isend`. T = B*S."""

    output: EncoderOutput
    ids: torch.Tensor  # (T,) int64
    pos: torch.Tensor  # (3, T) int64
    mask: torch.Tensor | None  # (T,) int64 (wire form of any integer/bool mask)
    rope: torch.Tensor  # (B,) int64
    rows: torch.Tensor  # (N, 1+K, H) token-major, contiguous
    cuda: bool = False  # the data travels as CUDA tensors (FLAG_CUDA); set by the sender from its device
    _vis_cumsum: torch.Tensor | None = None  # (T,) int64 visual tokens up to flat position t (lazy)
    _rows_at: dict[int, int] = field(default_factory=dict)  # rows_before(t) of chunk boundaries seen

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
        rows = out.visual_rows()
        if rows is None and out.num_visual_tokens:  # not token-major yet: interleave them (one copy)
            rows = out.token_major().visual_rows()
        elif rows is None:  # no visual rows
            rows = out.visual_embeds.new_empty(0, 1 + out.num_deepstack_levels, out.hidden_size)
        b, s = out.input_ids.shape
        ids = out.input_ids.reshape(-1).contiguous()
        if out.image_token_id is None and out.video_token_id is None and out.num_visual_tokens:
            raise TransferError("EncoderOutput has visual rows but no image/video token id", None, "image_token_id")
        mask = None
        if out.attention_mask is not None:
            mask = out.attention_mask.reshape(-1)
            mask = mask if mask.dtype == torch.int64 else mask.to(torch.int64)
        return cls(
            output=out,
            ids=ids,
            pos=out.position_ids.reshape(3, b * s),
            mask=mask,
            rope=out.rope_deltas.reshape(-1).contiguous(),
            rows=rows,
        )

    def rows_before(self, t: int) -> int:
        """Visual rows carried by the flat tokens [0, t)."""
        if t <= 0:
            return 0
        if t >= self.total:
            return self.output.num_visual_tokens  # validate() checked placeholders == N
        rows = self._rows_at.get(t)
        if rows is not None:  # each boundary is asked for by 2 chunks, each chunk's header twice
            return rows
        if self._vis_cumsum is None:  # only chunk boundaries inside the request need it
            out = self.output
            is_vis = placeholder_mask(self.ids, out.image_token_id, out.video_token_id)
            if is_vis is None:
                return 0
            self._vis_cumsum = torch.cumsum(is_vis, 0)  # bool -> int64 running count
        rows = self._rows_at[t] = int(self._vis_cumsum[t - 1])
        return rows

    def header(self, request_id: int, chunk_index: int, offset: int, capacity: int,
               inline_bytes: int = 0) -> ChunkHeader:
        """Header of the chunk at `offset`. Its int section rides in the header's message
        (`FLAG_INTS`) when it fits the receiver's `inline_bytes`; else the data carries it."""
        out = self.output
        count = min(capacity, self.total - offset)
        r0, r1 = self.rows_before(offset), self.rows_before(offset + count)
        first, last = offset == 0, offset + count >= self.total
        h = ChunkHeader(
            kind=KIND_CHUNK,
            request_id=request_id,
            chunk_index=chunk_index,
            token_offset=offset,
            token_count=count,
            total_tokens=self.total,
            batch_size=out.batch_size,
            seq_len=out.seq_len,
            num_visual=out.num_visual_tokens,
            row_offset=r0,
            row_count=r1 - r0,
            num_deepstack_levels=out.num_deepstack_levels,
            hidden_size=out.hidden_size,
            embed_dtype=dtype_code(out.visual_embeds.dtype),
            mask_dtype=NONE_ID if out.attention_mask is None else dtype_code(out.attention_mask.dtype),
            image_token_id=_id(out.image_token_id),
            video_token_id=_id(out.video_token_id),
            flags=(FLAG_FIRST if first else 0) | (FLAG_LAST if last else 0) | (FLAG_CUDA if self.cuda else 0),
            capacity=capacity,
        )
        h.int_bytes = 8 * int_numel(h)
        h.embed_bytes = embed_nbytes(h)
        if h.int_bytes <= inline_bytes:
            h.flags |= FLAG_INTS  # data = the rows alone: one message, nothing to pack
        elif h.row_count and h.int_bytes + h.embed_bytes <= PACK_LIMIT:
            h.flags |= FLAG_PACKED
        return h

    def _int_parts(self, h: ChunkHeader) -> list[torch.Tensor]:
        """[rope (B) if first][ids (c)][positions (3, c)][mask (c)], flat int64."""
        o, c = h.token_offset, h.token_count
        parts = [self.rope] if h.first else []
        parts += [self.ids[o : o + c], self.pos[:, o : o + c].reshape(-1)]
        if self.mask is not None:
            parts.append(self.mask[o : o + c])
        return parts

    def int_section(self, h: ChunkHeader) -> torch.Tensor:
        """(int_numel,) int64: [rope (B) if first][ids (c)][positions (3, c)][mask (c)]."""
        return torch.cat(self._int_parts(h))

    def _embed_parts(self, h: ChunkHeader) -> list[torch.Tensor]:
        """[the (n, 1+K, H) rows of chunk `h`] (one contiguous block), or [] without rows."""
        r0, n = h.row_offset, h.row_count
        return [self.rows[r0 : r0 + n]] if n else []

    def messages(self, h: ChunkHeader) -> list[torch.Tensor]:
        """Data tensors of chunk `h`, in wire order (zero-size messages are never sent)."""
        if h.ints_inline:  # the int section went with the header
            return self._embed_parts(h)
        if h.packed:  # one memcpy of everything into one uint8 message
            return [_bytes_of(self._int_parts(h), self._embed_parts(h))]
        return [t for t in [self.int_section(h)] + self._embed_parts(h) if t.numel()]

    def header_message(self, h: ChunkHeader) -> torch.Tensor:
        """Header `h` as a message: int64 words, followed by the int section when `FLAG_INTS`."""
        if h.ints_inline:
            return _bytes_of(self._int_parts(h), [], h.to_bytes())
        return h.to_tensor()

    def inline_message(self, h: ChunkHeader) -> torch.Tensor:
        """Header and data of chunk `h` as one uint8 message (`FLAG_INLINE`, staging byte layout)."""
        return _bytes_of(self._int_parts(h), self._embed_parts(h), h.to_bytes())


def _bytes_of(ints: list[torch.Tensor], embeds: list[torch.Tensor], header: bytearray | None = None) -> torch.Tensor:
    """[header][int64 parts][embedding parts] as one uint8 tensor (one concatenation)."""
    pieces = [] if header is None else [torch.frombuffer(header, dtype=torch.uint8)]
    pieces += [t.reshape(-1).contiguous().view(torch.uint8) for t in ints + embeds]
    return torch.cat(pieces)


def data_sizes(h: ChunkHeader) -> list[int]:
    """Byte sizes of the data messages of chunk `h` (as `SendPlan.messages` sends them)."""
    if h.inline:
        return []
    if h.ints_inline:
        sizes = [h.embed_bytes]
    elif h.packed:
        sizes = [h.int_bytes + h.embed_bytes]
    else:
        sizes = [h.int_bytes, h.embed_bytes]
    return [n for n in sizes if n]


def int_numel(h: ChunkHeader) -> int:
    c = h.token_count
    return (h.batch_size if h.first else 0) + 4 * c + (c if h.mask_dtype != NONE_ID else 0)


def embed_nbytes(h: ChunkHeader) -> int:
    itemsize = CODE_DTYPES[h.embed_dtype].itemsize
    return (1 + h.num_deepstack_levels) * h.row_count * h.hidden_size * itemsize


def staging_nbytes(capacity: int, max_batch_size: int, levels: int, hidden: int, dtype: torch.dtype) -> int:
    itemsize = dtype.itemsize
    return 8 * (max_batch_size + 5 * capacity) + (1 + levels) * capacity * hidden * itemsize


@dataclass
class ChunkViews:
    """Views of one received chunk (into staging, or into the result)."""

    ints: torch.Tensor  # (int_numel,) int64
    rows: torch.Tensor  # (n, 1+K, H) token-major
    targets: list[torch.Tensor]  # what to irecv into, in wire order
    staged: bool = True  # embeddings are in staging (scatter copies them into the result)
    ints_in_place: bool = False  # the int section landed in the result's own int block

    @property
    def visual(self) -> torch.Tensor:  # (n, H), a view of `rows`
        return visual_rows_to_fields(self.rows)[0]

    @property
    def deepstack(self) -> torch.Tensor:  # (K, n, H), a view of `rows`
        return visual_rows_to_fields(self.rows)[1]


def staging_views(staging: torch.Tensor, h: ChunkHeader) -> ChunkViews:
    """Lay chunk `h` out in the uint8 `staging` buffer."""
    dtype = CODE_DTYPES[h.embed_dtype]
    ints = staging[: h.int_bytes].view(torch.int64)
    rows = staging[h.int_bytes : h.int_bytes + h.embed_bytes].view(dtype).view(h.row_count, 1 + h.num_deepstack_levels, h.hidden_size)
    targets = [staging[: h.int_bytes + h.embed_bytes]] if h.packed else [ints, rows]
    return ChunkViews(ints, rows, [t for t in targets if t.numel()])


def direct_views(staging: torch.Tensor, h: ChunkHeader, result_rows: torch.Tensor,
                 int_block: torch.Tensor | None = None) -> ChunkViews:
    """Large chunks: rows straight into the result's (N, 1+K, H) `result_rows` (no extra copy);
    the int section too when the result has a wire-layout `int_block` (one-chunk requests, see
    `empty_result`), else into staging."""
    if h.packed or (not h.row_count and int_block is None):
        return staging_views(staging, h)
    ints = staging[: h.int_bytes].view(torch.int64) if int_block is None else int_block
    rows = result_rows[h.row_offset : h.row_offset + h.row_count]
    return ChunkViews(ints, rows, [t for t in (ints, rows) if t.numel()], staged=False,
                      ints_in_place=int_block is not None)


@dataclass
class IntParts:
    rope: torch.Tensor | None  # (B,) on the first chunk
    ids: torch.Tensor  # (c,)
    pos: torch.Tensor  # (3, c)
    mask: torch.Tensor | None  # (c,) int64 wire form


def split_ints(ints: torch.Tensor, h: ChunkHeader) -> IntParts:
    c, at = h.token_count, 0
    rope = None
    if h.first:
        rope, at = ints[: h.batch_size], h.batch_size
    ids = ints[at : at + c]
    pos = ints[at + c : at + 4 * c].view(3, c)
    mask = ints[at + 4 * c : at + 5 * c] if h.mask_dtype != NONE_ID else None
    return IntParts(rope, ids, pos, mask)


def empty_result(h: ChunkHeader, device: torch.device, embed_buffer: torch.Tensor | None = None
                 ) -> tuple[EncoderOutput, torch.Tensor, torch.Tensor | None]:
    """Allocate the assembled EncoderOutput described by first-chunk header `h`, and return it with
    its token-major (N, 1+K, H) rows, of which its visual and deepstack tensors are views. The rows
    use `embed_buffer` (uint8, large enough) when given, else fresh memory. A one-chunk request
    also gets its int tensors as views of one int64 block in the wire's int layout (rope | ids |
    positions | mask), returned third (else None): its int section is received in place, without
    staging or a copy."""
    b, s, n, k, hid = h.batch_size, h.seq_len, h.num_visual, h.num_deepstack_levels, h.hidden_size
    dtype = CODE_DTYPES[h.embed_dtype]
    nbytes = (1 + k) * n * hid * dtype.itemsize
    if embed_buffer is None or embed_buffer.numel() < nbytes:
        embed_buffer = torch.empty(nbytes, dtype=torch.uint8, device=device)
    rows = embed_buffer[:nbytes].view(dtype).view(n, 1 + k, hid)
    visual, deepstack = visual_rows_to_fields(rows)
    mask_dtype = None if h.mask_dtype == NONE_ID else CODE_DTYPES[h.mask_dtype]
    block = None
    if h.last:  # one chunk
        block = torch.empty(int_numel(h), dtype=torch.int64, device=device)
        parts = split_ints(block, h)
        ids, pos, rope = parts.ids.view(b, s), parts.pos.view(3, b, s), parts.rope.view(b, 1)
        mask = parts.mask.view(b, s) if mask_dtype == torch.int64 else None
    else:
        ids = torch.empty(b, s, dtype=torch.int64, device=device)
        pos = torch.empty(3, b, s, dtype=torch.int64, device=device)
        rope = torch.empty(b, 1, dtype=torch.int64, device=device)
        mask = None
    if mask_dtype is not None and mask is None:
        mask = torch.empty(b, s, dtype=mask_dtype, device=device)
    out = EncoderOutput(
        input_ids=ids,
        position_ids=pos,
        rope_deltas=rope,
        visual_embeds=visual,
        deepstack_visual_embeds=deepstack,
        attention_mask=mask,
        image_token_id=token_id(h.image_token_id),
        video_token_id=token_id(h.video_token_id),
    )
    return out, rows, block


def inline_result(views: ChunkViews, parts: "IntParts", h: ChunkHeader) -> EncoderOutput:
    """A one-chunk request received inline (staging byte layout; `parts` = its split ints): the
    result's tensors are views of the buffer it arrived in, nothing is copied (except a mask of
    another dtype than int64)."""
    b, s = h.batch_size, h.seq_len
    mask = None
    if parts.mask is not None:
        mask = parts.mask.view(b, s)
        if CODE_DTYPES[h.mask_dtype] != torch.int64:
            mask = mask.to(CODE_DTYPES[h.mask_dtype])
    return EncoderOutput(
        input_ids=parts.ids.view(b, s),
        position_ids=parts.pos.view(3, b, s),
        rope_deltas=parts.rope.view(b, 1),
        visual_embeds=views.visual,
        deepstack_visual_embeds=views.deepstack,
        attention_mask=mask,
        image_token_id=token_id(h.image_token_id),
        video_token_id=token_id(h.video_token_id),
    )


def scatter_chunk(views: ChunkViews, h: ChunkHeader, result: EncoderOutput, result_rows: torch.Tensor) -> None:
    """Copy the chunk's per-token data (and staged rows) into the assembled result."""
    parts = split_ints(views.ints, h)
    o, c = h.token_offset, h.token_count
    mask = result.attention_mask
    if views.ints_in_place:  # only a mask of another dtype than the wire's int64 is left to convert
        if parts.mask is not None and mask is not None and mask.dtype != torch.int64:
            mask.view(-1).copy_(parts.mask)
    else:
        if parts.rope is not None:
            result.rope_deltas.view(-1).copy_(parts.rope)
        result.input_ids.view(-1)[o : o + c].copy_(parts.ids)
        result.position_ids.view(3, -1)[:, o : o + c].copy_(parts.pos)
        if parts.mask is not None and mask is not None:
            mask.view(-1)[o : o + c].copy_(parts.mask.to(mask.dtype))
    r0, n = h.row_offset, h.row_count
    if n and views.staged:  # rows received into staging
        result_rows[r0 : r0 + n].copy_(views.rows)


def count_visual(ids: torch.Tensor, h: ChunkHeader) -> int:
    flags = placeholder_mask(ids, token_id(h.image_token_id), token_id(h.video_token_id))
    return 0 if flags is None else int(flags.count_nonzero())
