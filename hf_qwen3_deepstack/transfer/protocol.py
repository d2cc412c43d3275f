"""Wire format of the transfer layer (version 7). This docstring is its one reference;
`docs/transfer-protocol.md` explains the design around it.

Channel: one sender rank, one receiver rank, one process group, a tag base T (default 100).

    T+1  control  receiver -> sender    `Control`: CONTROL_WORDS int64, host memory (CPU backend)
    T+2  rows     sender -> receiver    a chunk's rows, on the data's device (gloo or NCCL)
    T+3  header   sender -> receiver    header message: uint8 bytes in host memory (CPU backend)

Conversation. The receiver drives it; a channel carries one request at a time, chunk by chunk:

    receiver                 sender answers
    PULL(NEXT)               the header message of chunk 0 of its oldest unsent request (once one
                             is queued; BYE once closed)
    PULL(rid, offset)        the rows message of the chunk at `offset` (none if it has no rows),
                             then the next header message: chunk offset+count of `rid`, or, after
                             the last chunk, chunk 0 of the next request (once queued; BYE once
                             closed). Everything below `offset` is acknowledged.
    ACK(rid, total)          `rid` was received whole: the sender's handle completes
    REJECT(rid, field)       `rid` is dropped: the sender's handle fails naming the field
    CLOSE                    the receiver is gone: the sender fails what is pending and answers a
                             pending PULL with BYE

Before sending a control message that is answered the receiver posts the receives of the answer
(gloo then never holds a message for a late receive). On CUDA the rows receive is posted just after
the PULL: NCCL may set up a pair's communicator inside the first operation of each side, which
waits for the peer's first one. NCCL ignores tags and runs a pair's operations in posting order, so
only rows travel on it: both ends post them in the same order, one per pulled chunk with rows.

Header message:  MAGIC, VERSION, the `ChunkHeader` fields in order, CRC-32 of the words before it
                 (HEADER_WORDS int64); then the chunk's int section (`int_bytes`, int64:
                 rope deltas (B) on the first chunk, ids (c), positions (3, c), mask (c) if any);
                 then the word TRAILER. BYE and ERROR headers have no int section.
Rows message:    (row_count, 1+K, H) of `embed_dtype`, token-major: each visual row followed by
                 its K deepstack rows. `rows_tail` is the message's last byte (CPU data only).
Control:         MAGIC, VERSION, the `Control` fields in order, CRC-32 (CONTROL_WORDS int64).

Chunks cut the flattened (B*S) token order into `capacity` tokens (the last one shorter); a chunk
carries the visual rows of its own visual tokens, with their deepstack rows.

Validation. A receiver checks every header field against hard limits (MAX_*) and its own
configuration before it sizes anything from it, and commits the H/K it learns from a first request
only once that whole header is valid. Every rejection names the request, the field, the value and
the allowed range (`HeaderMismatch`), and the channel stays in step (REJECT, then PULL(NEXT)).

Message lengths. gloo accepts a message shorter than the receive it lands in, aborts the receiving
process on a longer one, and reports neither length, so the receiver checks lengths itself:
  * header receives are posted at the largest header message the receiver accepts, + SLACK bytes,
    into a buffer filled with a random per-channel word whose bytes all differ from TRAILER's.
    A header message that ends early leaves the fill where TRAILER should be; one that runs long
    overwrites the fill word after it (missed only if it wrote those very bytes: 2**-8 per byte).
  * a rows receive on gloo is posted from the chunk's place to the end of its buffer (staging, or
    the result of `recv()`), at least SLACK bytes beyond the announced end. The receiver writes
    the complement of `rows_tail` as the chunk's last byte and random bytes right after it: a
    short message leaves that complement (always caught), a long one overwrites the random bytes.
  * a message longer than the receive it lands in is beyond the receiver's buffers: gloo aborts the
    process in its own thread, and nothing above gloo can catch that. NCCL needs equal counts on
    both ends, so CUDA rows receives are exactly the announced size.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, fields

import torch

MAGIC = 0x5157334453544B31  # b"QW3DSTK1"
VERSION = 7
TRAILER = 0x3F444E452D4B4843  # last word of a header message
NEXT = -1  # request id of PULL(NEXT)
NONE_ID = -1  # no image/video token id, no mask
SLACK = 1 << 16  # bytes every gloo receive extends past the announced end of its message

KIND_CHUNK, KIND_BYE, KIND_ERROR = 1, 2, 3  # headers
KIND_PULL, KIND_ACK, KIND_REJECT, KIND_CLOSE = 16, 17, 18, 19  # control messages
FLAG_FIRST, FLAG_LAST, FLAG_CUDA = 1, 2, 4  # FLAG_CUDA: the rows travel as CUDA tensors (NCCL)
ERR_UNKNOWN_REQUEST, ERR_BAD_OFFSET, ERR_BAD_CONTROL = 1, 2, 3
ERROR_NAMES = {ERR_UNKNOWN_REQUEST: "unknown request id", ERR_BAD_OFFSET: "offset", ERR_BAD_CONTROL: "control"}

# hard limits, whatever the receiver's configuration
MAX_ID = (1 << 62) - 1  # request ids and placeholder token ids
MAX_HIDDEN = 1 << 16
MAX_LEVELS = 64

DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1, torch.bfloat16: 2, torch.float16: 3, torch.float64: 4,
    torch.int64: 5, torch.int32: 6, torch.int16: 7, torch.int8: 8, torch.uint8: 9, torch.bool: 10,
}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
EMBED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
MASK_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)


class TransferError(RuntimeError):
    """Any failure of the transfer layer. `request_id` and `field` name what failed when known."""

    def __init__(self, message: str, request_id: int | None = None, field: str | None = None):
        super().__init__(message)
        self.request_id = request_id
        self.field = field


class HeaderMismatch(TransferError):
    """A message failed validation: its envelope, a field out of range or against expectations,
    or its length. `field` names the header field."""


class TransferTimeout(TransferError):
    """The peer did not answer in time. The receives stay posted: calling again resumes."""

    def __init__(self, message: str, request_id: int | None = None, offset: int | None = None):
        super().__init__(message, request_id, "timeout")
        self.offset = offset


class PeerClosed(TransferError):
    """The peer closed the channel (sender: no more requests; receiver: gone)."""


def dtype_code(dtype: torch.dtype) -> int:
    if dtype not in DTYPE_CODES:
        raise TransferError(f"dtype {dtype} cannot be transferred", None, "dtype")
    return DTYPE_CODES[dtype]


def req_name(request_id: int | None) -> str:
    return "request <next>" if request_id in (NEXT, None) else f"request {request_id}"


@dataclass
class ChunkHeader:
    """One chunk of a request (or BYE / ERROR). Token ranges index the flattened (B*S) order."""

    kind: int = KIND_CHUNK
    request_id: int = NEXT
    token_offset: int = 0  # first token of the chunk
    token_count: int = 0  # c, at most `capacity`
    total_tokens: int = 0  # B * S
    batch_size: int = 0  # B
    seq_len: int = 0  # S
    num_visual: int = 0  # N, visual rows of the whole request
    row_offset: int = 0  # first visual row of the chunk
    row_count: int = 0  # n, visual rows of the chunk
    num_deepstack_levels: int = 0  # K
    hidden_size: int = 0  # H
    embed_dtype: int = 0  # dtype code of the rows
    mask_dtype: int = NONE_ID  # dtype code of attention_mask, NONE_ID: no mask
    image_token_id: int = NONE_ID
    video_token_id: int = NONE_ID
    flags: int = 0  # FLAG_*
    int_bytes: int = 0  # bytes of the int section in this header message
    embed_bytes: int = 0  # bytes of the rows message: n * (1+K) * H * itemsize
    capacity: int = 0  # the receiver capacity the request is cut for
    rows_tail: int = 0  # last byte of the rows message (CPU data; 0 for CUDA)
    error_code: int = 0  # ERROR: ERR_*

    @property
    def first(self) -> bool:
        return bool(self.flags & FLAG_FIRST)

    @property
    def last(self) -> bool:
        return bool(self.flags & FLAG_LAST)

    def to_bytes(self) -> bytes:
        return _seal(self)

    @classmethod
    def parse(cls, words: list[int], request_id: int | None = None) -> "ChunkHeader":
        """`request_id`: the request expected, to name in errors (else the one the words claim)."""
        return cls(*_open(cls, words, request_id, "header"))


@dataclass
class Control:
    """Receiver -> sender."""

    kind: int = KIND_PULL
    request_id: int = NEXT
    offset: int = 0  # PULL: acknowledged tokens = the chunk wanted
    capacity: int = 0  # receiver capacity in tokens
    total: int = 0  # ACK: tokens received
    reason: int = 0  # REJECT: index of the offending ChunkHeader field (-1: the envelope)
    header_bytes: int = 0  # the largest header message the receiver accepts

    def to_tensor(self) -> torch.Tensor:
        return torch.frombuffer(bytearray(_seal(self)), dtype=torch.int64)

    @classmethod
    def parse(cls, words: list[int]) -> "Control":
        return cls(*_open(cls, words, None, "control message"))


HEADER_FIELDS = tuple(f.name for f in fields(ChunkHeader))
HEADER_WORDS = 3 + len(HEADER_FIELDS)
HEADER_BYTES = 8 * HEADER_WORDS
CONTROL_WORDS = 3 + len(fields(Control))


def _seal(msg: object) -> bytes:
    words = [MAGIC, VERSION] + [int(getattr(msg, f.name)) for f in fields(msg)]
    try:
        body = struct.pack(f"={len(words)}q", *words)
    except struct.error as e:
        bad = [f.name for f in fields(msg) if not -(1 << 63) <= int(getattr(msg, f.name)) < 1 << 63]
        raise TransferError(f"{type(msg).__name__} field(s) {bad} do not fit in int64",
                            getattr(msg, "request_id", None), bad[0] if bad else None) from e
    return body + struct.pack("=q", zlib.crc32(body))


def _open(cls: type, words: list[int], request_id: int | None, what: str) -> list[int]:
    """The fields of a sealed message; HeaderMismatch naming magic, version or checksum."""
    if request_id in (None, NEXT) and len(words) > 3:
        request_id = words[3]  # as the message claims: the best name there is
    where = f"{req_name(request_id)}: {what}"
    n = 3 + len(fields(cls))
    if len(words) != n:
        raise HeaderMismatch(f"{where} has {len(words)} words, allowed: {n}", request_id, "size")
    crc = zlib.crc32(struct.pack(f"={n - 1}q", *words[:-1]))
    for name, got, want in (("magic", words[0], MAGIC), ("version", words[1], VERSION), ("checksum", words[-1], crc)):
        if got != want:
            note = " (the CRC-32 of the words before it: a corrupt or cut message)" if name == "checksum" else ""
            raise HeaderMismatch(f"{where} field '{name}' is {got:#x}, allowed: {want:#x}{note}", request_id, name)
    return words[2:-1]


def header_message(h: ChunkHeader, ints: list[torch.Tensor] = ()) -> torch.Tensor:
    """A header message: `h`, its int section (flat int64 parts), TRAILER; as one uint8 tensor."""
    parts = [torch.frombuffer(bytearray(h.to_bytes()), dtype=torch.uint8)]
    parts += [t.reshape(-1).contiguous().view(torch.uint8) for t in ints]
    parts.append(torch.frombuffer(bytearray(struct.pack("=q", TRAILER)), dtype=torch.uint8))
    return torch.cat(parts)


def mismatch(request_id: int, field: str, value: object, allowed: object, offset: int | None = None
             ) -> HeaderMismatch:
    where = f" at token offset {offset}" if offset is not None else ""
    return HeaderMismatch(f"{req_name(request_id)}{where}: header field '{field}' is {value}, allowed: {allowed}",
                          request_id, field)
