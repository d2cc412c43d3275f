"""Wire format of the transfer layer: fixed-size int64 headers, dtype codes, validation, errors.

Two message types travel as plain int64 tensors (never pickle):

* ``ChunkHeader`` (sender -> receiver, ``HEADER_WORDS`` int64, on the header tag): describes one
  chunk before the receiver asks for its data (or carries it inline, ``FLAG_INLINE``, or its int
  section, ``FLAG_INTS``, in the same message), or says ``BYE`` (sender closed) / ``ERROR``
  (sender refused a pull).
* ``Control`` (receiver -> sender, ``CONTROL_WORDS`` int64): ``PULL`` with ``request_id == NEXT``
  ("describe the next new request": answered by its first chunk header), ``PULL`` of a request
  at ``offset`` (everything below is acknowledged; the receiver has posted the receives for the
  data of the chunk at ``offset`` and for the header of the chunk after it: send both), ``ACK``
  (``done_request_id`` is fully acknowledged; also carried by a ``PULL``), ``REJECT`` or ``CLOSE``.

Both end with a checksum word (CRC-32 of the words before it) so a corrupted or
misaligned message is caught before any field is trusted.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, fields

import torch

MAGIC = 0x5157334453544B31  # b"QW3DSTK1"
VERSION = 6  # 6: FLAG_CUDA (control and headers on the CPU backend on every device)
HEADER_WORDS = 32
HEADER_BYTES = 8 * HEADER_WORDS
CONTROL_WORDS = 16
NEXT = -1  # request id in a PULL: "the next new request"
NONE_ID = -1  # absent image/video token id, absent mask dtype, no done request

# header kinds
KIND_CHUNK = 1
KIND_BYE = 2
KIND_ERROR = 3
# control kinds
KIND_PULL = 16
KIND_CLOSE = 17
KIND_REJECT = 18  # receiver refuses a request whose header disagrees with its expectations
KIND_ACK = 19  # acknowledgement only (done_request_id)

# control flags (PULL of a request)
PULL_DATA_ONLY = 1  # re-send this chunk's data, not the next header (the receiver has it)
PULL_DESCRIBE_NEXT = 2  # after the last chunk's data, describe the next request (prefetch)
PULL_PUSH = 4  # PULL(NEXT): send the whole request described, every chunk's header and data, unpulled

# chunk flags
FLAG_FIRST = 1
FLAG_LAST = 2
FLAG_PACKED = 4  # ints + embeddings in one uint8 message (small chunks)
FLAG_INLINE = 8  # the (packed) data follows the header in the same message
FLAG_INTS = 16  # the chunk's int section follows the header in the same message; its data is the rows
FLAG_PULLED = 32  # in a pushed request: this chunk's data is sent when pulled (see PUSH_LIMIT in chunking)
FLAG_CUDA = 64  # the chunk data travels as CUDA tensors (NCCL); the receiver's device must be CUDA too

# sender error codes (KIND_ERROR headers)
ERR_UNKNOWN_REQUEST = 1
ERR_BAD_OFFSET = 2
ERR_BAD_CONTROL = 3
ERROR_NAMES = {ERR_UNKNOWN_REQUEST: "unknown request id", ERR_BAD_OFFSET: "offset", ERR_BAD_CONTROL: "control"}

DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.bfloat16: 2,
    torch.float16: 3,
    torch.float64: 4,
    torch.int64: 5,
    torch.int32: 6,
    torch.int16: 7,
    torch.int8: 8,
    torch.uint8: 9,
    torch.bool: 10,
}
CODE_DTYPES: dict[int, torch.dtype] = {v: k for k, v in DTYPE_CODES.items()}
EMBED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
MASK_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)


class TransferError(RuntimeError):
    """Any failure of the transfer layer. `request_id` and `field` name what failed when known."""

    def __init__(self, message: str, request_id: int | None = None, field: str | None = None):
        super().__init__(message)
        self.request_id = request_id
        self.field = field


class HeaderMismatch(TransferError):
    """A header or control message failed validation (bad magic/version/checksum, or a field
    that disagrees with the receiver's expectations or with the request's first chunk)."""


class TransferTimeout(TransferError):
    """The peer did not answer within the configured timeout. The transfer can be resumed."""

    def __init__(self, message: str, request_id: int | None = None, offset: int | None = None):
        super().__init__(message, request_id, "timeout")
        self.offset = offset


class PeerClosed(TransferError):
    """The peer closed the channel (sender: no more requests; receiver: gone)."""


def dtype_code(dtype: torch.dtype) -> int:
    if dtype not in DTYPE_CODES:
        raise TransferError(f"dtype {dtype} cannot be transferred")
    return DTYPE_CODES[dtype]


def _checksum(words: list[int]) -> int:
    return zlib.crc32(struct.pack(f"={len(words)}q", *words))


def req_name(request_id: int) -> str:
    return "request <next>" if request_id == NEXT else f"request {request_id}"


@dataclass
class ChunkHeader:
    """Fixed-size header of one chunk. Token ranges index the flattened (B*S) token order."""

    kind: int = KIND_CHUNK
    request_id: int = NEXT
    chunk_index: int = 0
    token_offset: int = 0  # first flattened token of this chunk
    token_count: int = 0  # tokens in this chunk (<= receiver capacity)
    total_tokens: int = 0  # B * S
    batch_size: int = 0  # B
    seq_len: int = 0  # S
    num_visual: int = 0  # N, visual rows of the whole request
    row_offset: int = 0  # first visual row carried by this chunk
    row_count: int = 0  # visual rows carried by this chunk
    num_deepstack_levels: int = 0  # K
    hidden_size: int = 0  # H
    embed_dtype: int = 0  # dtype code of visual_embeds / deepstack
    mask_dtype: int = NONE_ID  # dtype code of attention_mask, NONE_ID = no mask
    image_token_id: int = NONE_ID
    video_token_id: int = NONE_ID
    flags: int = 0
    int_bytes: int = 0  # bytes of the int64 section (rope deltas on the first chunk, ids, positions, mask)
    embed_bytes: int = 0  # bytes of visual rows + deepstack rows
    capacity: int = 0  # receiver capacity the chunk was cut for
    error_code: int = 0  # KIND_ERROR only

    @property
    def first(self) -> bool:
        return bool(self.flags & FLAG_FIRST)

    @property
    def last(self) -> bool:
        return bool(self.flags & FLAG_LAST)

    @property
    def packed(self) -> bool:
        return bool(self.flags & FLAG_PACKED)

    @property
    def inline(self) -> bool:
        return bool(self.flags & FLAG_INLINE)

    @property
    def ints_inline(self) -> bool:
        return bool(self.flags & FLAG_INTS)

    @property
    def pulled(self) -> bool:
        return bool(self.flags & FLAG_PULLED)

    @property
    def data_device_type(self) -> str:
        return "cuda" if self.flags & FLAG_CUDA else "cpu"

    def to_bytes(self) -> bytearray:
        return _seal(self, HEADER_WORDS)

    def to_tensor(self) -> torch.Tensor:
        return torch.frombuffer(self.to_bytes(), dtype=torch.int64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor, context: int = NEXT) -> "ChunkHeader":
        words = t.tolist()
        _check_envelope(words, HEADER_WORDS, context, "header")
        return cls(*words[2 : 2 + len(_names(cls))])


@dataclass
class Control:
    """Receiver -> sender message."""

    kind: int = KIND_PULL
    request_id: int = NEXT
    offset: int = 0  # acknowledged token offset == first token wanted
    capacity: int = 0  # receiver capacity in tokens
    done_request_id: int = NONE_ID  # this request is fully acknowledged
    done_total: int = 0  # its total tokens (cross-check)
    reason: int = 0  # KIND_REJECT: index of the offending ChunkHeader field
    flags: int = 0  # PULL_* flags
    inline_bytes: int = 0  # PULL(NEXT): data bytes the receiver accepts inline after a first header

    def to_tensor(self) -> torch.Tensor:
        return torch.frombuffer(_seal(self, CONTROL_WORDS), dtype=torch.int64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "Control":
        words = t.tolist()
        _check_envelope(words, CONTROL_WORDS, words[3] if len(words) > 3 else NEXT, "control message")
        return cls(*words[2 : 2 + len(_names(cls))])


_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def _seal(msg: object, n: int) -> bytearray:
    """[MAGIC, VERSION, fields..., 0 padding, checksum]: the `n` int64 words of a message, as bytes."""
    words = [MAGIC, VERSION] + [int(getattr(msg, name)) for name in _names(type(msg))]
    words += [0] * (n - 1 - len(words))
    try:
        body = struct.pack(f"={n - 1}q", *words)
    except struct.error as e:
        fields_ = dict(zip(("magic", "version") + _names(type(msg)), words))
        bad = [k for k, v in fields_.items() if not -(1 << 63) <= v < 1 << 63]
        raise TransferError(f"{type(msg).__name__} field(s) {bad} do not fit in int64", getattr(msg, "request_id", None),
                            bad[0] if bad else None) from e
    return bytearray(body + struct.pack("=q", zlib.crc32(body)))


def _check_envelope(words: list[int], n: int, request_id: int, what: str) -> None:
    if request_id == NEXT and len(words) > 3:
        request_id = words[3]  # as claimed by the message itself: the best name we have
    if len(words) != n:
        raise HeaderMismatch(f"{req_name(request_id)}: {what} has {len(words)} words, expected {n}", request_id, "size")
    if words[0] != MAGIC:
        raise HeaderMismatch(
            f"{req_name(request_id)}: {what} field 'magic' is {words[0]:#x}, expected {MAGIC:#x}", request_id, "magic"
        )
    if words[1] != VERSION:
        raise HeaderMismatch(
            f"{req_name(request_id)}: {what} field 'version' is {words[1]}, expected {VERSION}", request_id, "version"
        )
    if words[-1] != _checksum(words[:-1]):
        raise HeaderMismatch(f"{req_name(request_id)}: {what} checksum mismatch", request_id, "checksum")


def mismatch(request_id: int, field: str, got: object, expected: object, offset: int | None = None) -> HeaderMismatch:
    where = f" at token offset {offset}" if offset is not None else ""
    return HeaderMismatch(
        f"{req_name(request_id)}{where}: header field '{field}' is {got}, expected {expected}", request_id, field
    )


def expect_field(header: ChunkHeader, field: str, expected: object, offset: int | None = None) -> None:
    got = getattr(header, field)
    if got != expected:
        if field in ("embed_dtype", "mask_dtype"):
            got, expected = CODE_DTYPES.get(got, got), CODE_DTYPES.get(expected, expected)  # type: ignore[arg-type]
        raise mismatch(header.request_id, field, got, expected, offset)
