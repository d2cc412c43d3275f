"""Language side: `EncoderOutputReceiver` pulls requests chunk by chunk (see `protocol.py`)."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..encoder_output import EncoderOutput, visual_rows_to_fields
from ._wait import Pending, Waiter, remaining, settled
from .chunking import count_visual, int_numel, new_result, row_nbytes, scatter_ints, split_ints, token_id
from .link import PeerLink, claim, release
from .protocol import (
    CODE_DTYPES, CONTROL_WORDS, DTYPE_CODES, EMBED_DTYPES, ERROR_NAMES, FLAG_CUDA, FLAG_FIRST, FLAG_LAST,
    HEADER_BYTES, HEADER_FIELDS, KIND_ACK, KIND_BYE, KIND_CHUNK, KIND_CLOSE, KIND_ERROR, KIND_PULL, KIND_REJECT,
    MASK_DTYPES, MAX_HIDDEN, MAX_ID, MAX_LEVELS, NEXT, NONE_ID, SLACK, TRAILER, ChunkHeader, Control,
    HeaderMismatch, PeerClosed, TransferError, TransferTimeout, mismatch, req_name)
from .sender import DEFAULT_TAG

_SAME_AS_FIRST = ("total_tokens", "batch_size", "seq_len", "num_visual", "num_deepstack_levels", "hidden_size",
                  "embed_dtype", "mask_dtype", "image_token_id", "video_token_id", "capacity")
_EMBED_CODES = {DTYPE_CODES[d]: d for d in EMBED_DTYPES}
_MASK_CODES = {DTYPE_CODES[d]: d for d in MASK_DTYPES}
_TRAILER_BYTES = TRAILER.to_bytes(8, sys.byteorder, signed=False)


@dataclass
class EncoderOutputChunk:
    """One chunk of `recv_chunks()`. Tensors are views into the staging buffer, valid until the
    iterator advances. Token ranges index the flattened (B*S) order."""

    request_id: int
    peer: int
    chunk_index: int
    token_offset: int
    token_count: int
    total_tokens: int
    batch_size: int
    seq_len: int
    input_ids: torch.Tensor  # (c,) int64
    position_ids: torch.Tensor  # (3, c) int64
    attention_mask: torch.Tensor | None  # (c,) int64 wire form (cast to `mask_dtype` yourself)
    mask_dtype: torch.dtype | None
    rope_deltas: torch.Tensor  # (B, 1) int64, whole request
    visual_row_offset: int  # first visual row of the request carried here
    visual_embeds: torch.Tensor  # (n, H), a view of token-major (n, 1+K, H) rows
    deepstack_visual_embeds: torch.Tensor  # (K, n, H), a view of the same rows
    image_token_id: int | None
    video_token_id: int | None
    is_last: bool


class _Channel:
    """One sender: its header buffer, outstanding header receive and waiter threads."""

    def __init__(self, link: PeerLink, cond: threading.Condition, header_bytes: int):
        self.peer, self.link = link.peer, link
        # header messages land here (host memory on every device), filled with a word whose bytes
        # all differ from TRAILER's: see "Message lengths" in protocol.py
        rng = random.SystemRandom()
        fill = bytes(rng.choice([b for b in range(256) if b != t]) for t in _TRAILER_BYTES)
        self.fill = int.from_bytes(fill, sys.byteorder, signed=True)
        self.buf = torch.empty(header_bytes + SLACK, dtype=torch.uint8)
        self.buf.view(torch.int64).fill_(self.fill)
        self.dirty = 0  # bytes of `buf` to fill again before the next header receive
        self.canary = os.urandom(8)  # written after the end of each rows message
        self.header_waiter = Waiter(f"rx-hdr-{self.peer}", cond)  # header receives, control sends
        self.data_waiter = Waiter(f"rx-data-{self.peer}", cond)  # rows receives
        self.header: Pending | None = None  # the outstanding header receive
        self.closed = False  # BYE received
        self.broken: BaseException | None = None
        self.stale: int | None = None  # a request rejected mid-way: its next chunk header is on its way


@dataclass
class _Active:
    """The request being received (one per receiver at a time)."""

    ch: _Channel
    request_id: int
    first: ChunkHeader
    mode: str  # "recv" or "stream"
    result: EncoderOutput | None = None  # recv: the assembled output
    rows_buf: torch.Tensor | None = None  # recv: uint8 buffer of its rows (+ SLACK on CPU)
    rope: torch.Tensor | None = None  # stream: (B, 1)
    acked: int = 0  # tokens acknowledged
    rows_acked: int = 0
    header: ChunkHeader | None = None  # the chunk in progress
    data: list[Pending] | None = None
    region: torch.Tensor | None = None  # where its rows land
    stage: str = "ready"  # header: awaiting it | ready: here, rows not pulled | rows: pulled | have: received


class EncoderOutputReceiver:
    """Receive `EncoderOutput`s from one or several sender ranks (global ranks `peer`).

    `capacity_tokens` tokens per chunk bound the staging memory of `recv_chunks()`. `hidden_size`,
    `num_deepstack_levels`, `dtype`: expected values (else H and K are learned from the first valid
    request). `max_batch_size`, `max_tokens` (B*S) and `max_request_bytes` (the rows of `recv()`'s
    result) bound what a header may announce. Not thread-safe: use it from one thread (`recycle`
    may come from another)."""

    def __init__(self, peer: int | Sequence[int], group: dist.ProcessGroup | None = None, *, capacity_tokens: int,
                 device: torch.device | str | None = None, timeout: float = 60.0, hidden_size: int | None = None,
                 num_deepstack_levels: int | None = None, dtype: torch.dtype | None = None,
                 max_batch_size: int = 1024, max_tokens: int = 1 << 20, max_request_bytes: int = 1 << 34,
                 tag: int = DEFAULT_TAG):
        if capacity_tokens <= 0:
            raise ValueError("capacity_tokens must be positive")
        if dtype is not None and dtype not in EMBED_DTYPES:
            raise ValueError(f"dtype {dtype} is not an embedding dtype")
        if hidden_size is not None and not 1 <= hidden_size <= MAX_HIDDEN:
            raise ValueError(f"hidden_size must be in 1..{MAX_HIDDEN}")
        if num_deepstack_levels is not None and not 0 <= num_deepstack_levels <= MAX_LEVELS:
            raise ValueError(f"num_deepstack_levels must be in 0..{MAX_LEVELS}")
        self.peers = [peer] if isinstance(peer, int) else list(peer)
        self.group = group
        self.capacity_tokens = capacity_tokens
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.timeout = timeout
        self.hidden_size, self.num_deepstack_levels, self.dtype = hidden_size, num_deepstack_levels, dtype
        self.max_batch_size, self.max_tokens, self.max_request_bytes = max_batch_size, max_tokens, max_request_bytes
        self.ctrl_tag, self.data_tag, self.header_tag = tag + 1, tag + 2, tag + 3
        self._cuda = self.device.type == "cuda"
        self._ask_first = self._cuda  # send a PULL before posting its rows receive (NCCL, see protocol.py)
        self.header_bytes = HEADER_BYTES + 8 * (max_batch_size + 5 * capacity_tokens) + 8
        links = [PeerLink(p, group) for p in self.peers]  # every peer checked before anything starts
        self._claim = claim("receiver", links, tag)
        self._cond = threading.Condition()
        self._channels = [_Channel(link, self._cond, self.header_bytes) for link in links]
        self._rr = 0
        self._active: _Active | None = None
        self._staging: torch.Tensor | None = None  # recv_chunks(): uint8, int section then rows
        self._staging_ints = 8 * (max_batch_size + 5 * capacity_tokens)
        self._lock = threading.Lock()  # recycle() may run on another thread
        self._pool: torch.Tensor | None = None  # a recycled rows buffer
        self._owned: dict[int, None] = {}  # storages of recent results
        self.last_peer: int | None = None
        self.ctrl_bytes_sent = 0

    # ------------------------------------------------------------------ public API
    @property
    def staging_nbytes(self) -> int:
        return 0 if self._staging is None else self._staging.numel()

    @property
    def interrupted(self) -> int | None:
        """Request id of a started, unfinished request, else None."""
        return None if self._active is None else self._active.request_id

    def recv(self, timeout: float | None = None) -> tuple[int, EncoderOutput]:
        """Receive the next request whole (resuming an interrupted one first)."""
        deadline = self._deadline(timeout)
        act = self._active or self._start(deadline, "recv")
        self._check_mode(act, "recv")
        while True:
            self._advance(act, deadline)
            if self._ack(act):
                return act.request_id, act.result

    def recv_chunks(self, timeout: float | None = None) -> Iterator[EncoderOutputChunk]:
        """Stream the next request chunk by chunk (bounded memory; `timeout` per chunk). A chunk
        is acknowledged when the consumer asks for the next one; if it stops or raises, the
        request stays interrupted and `recv_chunks()`/`resume()` yield that chunk again."""
        act = self._active or self._start(self._deadline(timeout), "stream")
        self._check_mode(act, "stream")
        return self._stream(act, timeout)

    def resume(self, request_id: int, timeout: float | None = None):
        """Continue the interrupted request `request_id` with the call that started it."""
        act = self._active
        if act is None or act.request_id != request_id:
            raise TransferError(f"{req_name(request_id)}: nothing to resume (interrupted: {self.interrupted})",
                                request_id, "request_id")
        return self.recv(timeout) if act.mode == "recv" else self.recv_chunks(timeout)

    def recycle(self, output: EncoderOutput) -> None:
        """Hand back a result of `recv()` you no longer use: the next `recv()` reuses its rows memory
        (for large requests page-faulting fresh memory costs about as much as the transfer)."""
        storage = output.visual_embeds.untyped_storage()
        with self._lock:
            if storage.data_ptr() in self._owned:  # ours, not handed back yet
                del self._owned[storage.data_ptr()]
                buf = torch.empty(0, dtype=torch.uint8, device=self.device).set_(storage)
                if self._pool is None or buf.numel() > self._pool.numel():
                    self._pool = buf

    def poll(self) -> bool:
        """Non-blocking: True if `recv()` has something to work on. Also asks idle senders for
        their next request."""
        if self._active is not None:
            return True
        self._ask_next()
        return any(ch.header is not None and ch.header.done() for ch in self._channels)

    def close(self, timeout: float | None = None) -> None:
        """Tell every sender we are gone, and wait until nothing of ours is posted or pending:
        `dist.destroy_process_group()` may follow at once."""
        deadline = self._deadline(timeout)
        act, self._active = self._active, None
        for ch in self._channels:
            if ch.broken is not None:
                continue
            if act is not None and act.ch is ch and act.data:  # rows pulled: they come
                settled(act.data, deadline)
            try:
                sent = self._control(ch, Control(kind=KIND_CLOSE))
            except Exception:  # noqa: BLE001 - best effort on shutdown
                continue
            settled(sent + ([ch.header] if ch.header is not None else []), deadline)  # a header, or BYE
        for ch in self._channels:  # their threads are done with every work before the group may go
            for waiter in (ch.header_waiter, ch.data_waiter):
                waiter.stop(0 if ch.broken is not None else remaining(deadline))
        release(self._claim)

    def __enter__(self) -> "EncoderOutputReceiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ starting a request
    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _check_mode(self, act: _Active, mode: str) -> None:
        if act.mode != mode:
            call = "recv()" if act.mode == "recv" else "recv_chunks()"
            raise TransferError(f"{req_name(act.request_id)} is interrupted in {call}; resume it with {call} "
                                f"or resume({act.request_id})", act.request_id, "mode")

    def _ask_next(self) -> None:
        for ch in self._channels:
            if ch.header is None and not ch.closed and ch.broken is None:
                ctrl = Control(kind=KIND_PULL, request_id=NEXT)
                ch.header = self._control(ch, ctrl, expect_header=True)[0]

    def _start(self, deadline: float, mode: str) -> _Active:
        while True:
            self._ask_next()
            live = [ch for ch in self._channels if not ch.closed and ch.broken is None]
            if not live:
                broken = [ch.broken for ch in self._channels if ch.broken is not None]
                if broken:
                    raise TransferError(f"every channel is down: {broken[0]}") from broken[0]
                raise PeerClosed(f"all senders {self.peers} closed")
            ch = self._ready_channel(live, deadline)
            h, ints = self._take_header(ch, None, mode)
            if h is None:  # BYE, or the leftover header of a rejected request
                continue
            act = _Active(ch, h.request_id, h, mode, header=h)
            if self.hidden_size is None or self.num_deepstack_levels is None:  # commit what was learned
                self.hidden_size, self.num_deepstack_levels = h.hidden_size, h.num_deepstack_levels
            if mode == "recv":
                with self._lock:
                    pool, self._pool = (self._pool, None) if h.num_visual else (None, self._pool)
                act.result, act.rows_buf = new_result(h, self.device, pool, 0 if self._cuda else SLACK)
                if h.num_visual:
                    with self._lock:
                        self._owned[act.rows_buf.untyped_storage().data_ptr()] = None
                        while len(self._owned) > 64:  # results never recycled: forget the oldest
                            self._owned.pop(next(iter(self._owned)))
            else:
                act.rope = torch.empty(h.batch_size, 1, dtype=torch.int64, device=self.device)
                if self._staging is None:
                    itemsize = self.dtype.itemsize if self.dtype else max(4, CODE_DTYPES[h.embed_dtype].itemsize)
                    rows = self.capacity_tokens * (1 + h.num_deepstack_levels) * h.hidden_size * itemsize
                    self._staging = torch.empty(self._staging_ints + rows + SLACK, dtype=torch.uint8,
                                                device=self.device)
            self._use_ints(act, h, ints)
            self.last_peer = ch.peer
            self._active = act
            return act

    def _ready_channel(self, live: list[_Channel], deadline: float) -> _Channel:
        with self._cond:
            while True:
                for i in range(len(live)):
                    ch = live[(self._rr + i) % len(live)]
                    if ch.header is not None and ch.header.done():
                        self._rr = (self._rr + i + 1) % len(live)
                        return ch
                if remaining(deadline) <= 0:
                    raise TransferTimeout(f"request <next>: no chunk at token offset 0 from rank(s) "
                                          f"{[c.peer for c in live]} within the timeout", NEXT, 0)
                self._cond.wait(remaining(deadline))

    # ------------------------------------------------------------------ headers
    def _take_header(self, ch: _Channel, act: _Active | None, mode: str
                     ) -> tuple[ChunkHeader | None, torch.Tensor | None]:
        """The completed header of `ch`, validated (a first one when `act` is None), with a view of
        its int section (valid until the next header receive is posted). (None, None) for BYE
        or a stale header. Raises HeaderMismatch after rejecting the request."""
        p, ch.header = ch.header, None
        rid, offset = (NEXT, 0) if act is None else (act.request_id, act.acked)
        if p.error is not None:
            ch.broken = p.error
            raise TransferError(f"{req_name(rid)} at token offset {offset}: receive from rank {ch.peer} failed: "
                                f"{p.error}", rid, "connection") from p.error
        stale, ch.stale = ch.stale, None
        ch.dirty = ch.buf.numel()  # until the message is known to be well formed
        try:
            h = ChunkHeader.parse(ch.buf[:HEADER_BYTES].view(torch.int64).tolist(), None if act is None else rid)
        except HeaderMismatch as e:
            self._reject(ch, rid if act is not None else e.request_id, e)
            raise
        if h.kind == KIND_ERROR:  # a refused pull: its rows receive stays posted, the channel is unusable
            ch.broken = TransferError(f"sender rank {ch.peer} refused a pull")
            what = ERROR_NAMES.get(h.error_code, str(h.error_code))
            raise TransferError(f"{req_name(h.request_id)} at token offset {h.token_offset}: sender rank {ch.peer} "
                                f"refused the pull ({what})", h.request_id, what)
        try:
            if h.kind == KIND_BYE:
                self._check_length(ch, h, rid, offset)
                ch.closed = True
                if act is not None:
                    raise PeerClosed(f"{req_name(rid)} at token offset {offset}: sender rank {ch.peer} closed "
                                     f"mid-request", rid, "bye")
                return None, None
            if act is None and stale is not None and h.request_id == stale and not h.first:
                return None, None  # the next chunk of a request rejected mid-way: dropped
            self._validate(h, act, mode)
            self._check_length(ch, h, rid if act else h.request_id, offset)
            ints = ch.buf[HEADER_BYTES : HEADER_BYTES + h.int_bytes].view(torch.int64)
            seen = count_visual(split_ints(ints, h).ids, h)
            if seen != h.row_count:
                raise mismatch(h.request_id, "row_count", h.row_count,
                               f"{seen} (the placeholders among the chunk's ids)", offset)
        except HeaderMismatch as e:
            self._reject(ch, h.request_id if act is None else rid, e)
            raise
        return h, ints

    def _validate(self, h: ChunkHeader, act: _Active | None, mode: str) -> None:
        """Every field against hard limits, this receiver's configuration and the request so far."""
        first = h if act is None else act.first
        rid, o, rows_acked = (h.request_id, 0, 0) if act is None else (act.request_id, act.acked, act.rows_acked)

        def need(field: str, ok: bool, allowed: object) -> None:  # `allowed`: text, or a function making it
            if not ok:
                allowed = allowed() if callable(allowed) else allowed
                value = getattr(h, field)
                if field in ("embed_dtype", "mask_dtype"):
                    value = f"{value} ({CODE_DTYPES.get(value, 'no dtype')})"
                raise mismatch(rid, field, value, allowed, o)

        need("kind", h.kind == KIND_CHUNK, "1 (a chunk)")
        if act is None:
            b, s, t, n, k, hid = (h.batch_size, h.seq_len, h.total_tokens, h.num_visual, h.num_deepstack_levels,
                                  h.hidden_size)
            need("request_id", 0 <= rid <= MAX_ID, f"0..{MAX_ID}")
            need("flags", h.flags & ~(FLAG_FIRST | FLAG_LAST | FLAG_CUDA) == 0 and h.first,
                 "FIRST (1) + LAST (2) + CUDA (4), FIRST set")
            data = "cuda" if h.flags & FLAG_CUDA else "cpu"
            need("flags", data == self.device.type, lambda: f"data on {self.device.type}, this receiver's device (the "
                 f"header says data on {data}: give the receiver a device= of the sender's data device type)")
            need("capacity", h.capacity == self.capacity_tokens,
                 lambda: f"{self.capacity_tokens}, this receiver's capacity")
            need("batch_size", 1 <= b <= self.max_batch_size, lambda: f"1..{self.max_batch_size} (max_batch_size)")
            need("seq_len", 1 <= s <= self.max_tokens, lambda: f"1..{self.max_tokens} (max_tokens)")
            need("total_tokens", t == b * s and t <= self.max_tokens,
                 lambda: f"batch_size x seq_len = {b * s}, at most {self.max_tokens} (max_tokens)")
            need("num_visual", 0 <= n <= t, lambda: f"0..{t} (total_tokens)")
            want_k, want_h = self.num_deepstack_levels, self.hidden_size
            need("num_deepstack_levels", 0 <= k <= MAX_LEVELS and want_k in (None, k),
                 lambda: f"0..{MAX_LEVELS}" + (f", and {want_k} on this receiver" if want_k is not None else ""))
            need("hidden_size", 1 <= hid <= MAX_HIDDEN and want_h in (None, hid),
                 lambda: f"1..{MAX_HIDDEN}" + (f", and {want_h} on this receiver" if want_h is not None else ""))
            need("embed_dtype", h.embed_dtype in _EMBED_CODES and self.dtype in (None, _EMBED_CODES[h.embed_dtype]),
                 lambda: f"{self.dtype} on this receiver" if self.dtype else f"an embedding dtype code "
                 f"{sorted(_EMBED_CODES)}")
            need("mask_dtype", h.mask_dtype == NONE_ID or h.mask_dtype in _MASK_CODES,
                 lambda: f"{NONE_ID} (no mask) or a mask dtype code {sorted(_MASK_CODES)}")
            for name in ("image_token_id", "video_token_id"):
                need(name, getattr(h, name) == NONE_ID or 0 <= getattr(h, name) <= MAX_ID, f"{NONE_ID} or 0..{MAX_ID}")
            need("num_visual", n == 0 or h.image_token_id != NONE_ID or h.video_token_id != NONE_ID,
                 "0 without an image or video token id")
            need("num_visual", n * row_nbytes(h) <= self.max_request_bytes,
                 lambda: f"0..{self.max_request_bytes // row_nbytes(h)} rows of {row_nbytes(h)} bytes "
                 "(max_request_bytes)")
        else:
            need("request_id", h.request_id == rid, rid)
            for name in _SAME_AS_FIRST:
                need(name, getattr(h, name) == getattr(first, name),
                     lambda: f"{getattr(first, name)} as in the first chunk")
            need("flags", h.flags & ~FLAG_LAST == first.flags & ~(FLAG_FIRST | FLAG_LAST),
                 "LAST (2) + CUDA as in the first chunk")
        count = min(self.capacity_tokens, first.total_tokens - o)
        need("token_offset", h.token_offset == o, lambda: f"{o} (tokens acknowledged)")
        need("token_count", h.token_count == count, count)
        need("flags", h.last == (o + count == first.total_tokens), "LAST set exactly on the last chunk")
        need("row_offset", h.row_offset == rows_acked, lambda: f"{rows_acked} (rows received before)")
        left = first.num_visual - rows_acked
        need("row_count", (0 <= h.row_count <= min(count, left)) and (h.row_count == left or not h.last),
             lambda: f"{left} (the last chunk carries the rest of num_visual={first.num_visual})" if h.last
             else f"0..{min(count, left)}")
        need("int_bytes", h.int_bytes == 8 * int_numel(h), 8 * int_numel(h))
        need("embed_bytes", h.embed_bytes == h.row_count * row_nbytes(h), h.row_count * row_nbytes(h))
        need("rows_tail", 0 <= h.rows_tail <= 255, "0..255")
        if mode == "stream" and self._staging is not None:
            room = self._staging.numel() - self._staging_ints - SLACK
            need("embed_dtype", h.embed_bytes <= room, lambda: f"a dtype whose chunk fits the {room}-byte staging rows")

    def _check_length(self, ch: _Channel, h: ChunkHeader, rid: int, offset: int) -> None:
        """The header message ends with TRAILER where its header says, and the fill after it is intact."""
        end = HEADER_BYTES + h.int_bytes
        if h.kind != KIND_CHUNK and h.int_bytes != 0:
            raise mismatch(rid, "int_bytes", h.int_bytes, "0 (no int section after BYE)", offset)
        tail = ch.buf[end : end + 16].view(torch.int64).tolist()
        if tail[0] != TRAILER:
            raise mismatch(rid, "int_bytes", h.int_bytes, f"the header message's length: it ended before the "
                           f"{end + 8} bytes its header announces (a short message)", offset)
        if tail[1] != ch.fill:
            raise mismatch(rid, "int_bytes", h.int_bytes, f"the header message's length: it ran past the "
                           f"{end + 8} bytes its header announces (a long message)", offset)
        ch.dirty = end + 8

    def _use_ints(self, act: _Active, h: ChunkHeader, ints: torch.Tensor) -> None:
        """Copy the int section out of the header buffer (into the result, or staging)."""
        parts = split_ints(ints, h)
        if act.mode == "recv":
            scatter_ints(parts, h, act.result)
        else:
            if parts.rope is not None:
                act.rope.view(-1).copy_(parts.rope)
            self._staging[: h.int_bytes].view(torch.int64).copy_(ints)
        act.header, act.stage = h, "ready"

    def _reject(self, ch: _Channel, rid: int | None, err: HeaderMismatch) -> None:
        """Tell the sender to drop `rid`; the channel goes on with its next request."""
        field = HEADER_FIELDS.index(err.field) if err.field in HEADER_FIELDS else -1
        try:
            self._control(ch, Control(kind=KIND_REJECT, request_id=NEXT if rid is None else rid, reason=field))
        except Exception as e:  # noqa: BLE001 - cannot resynchronise: the channel is unusable
            ch.broken = e
        if self._active is not None and self._active.ch is ch:
            self._active = None

    # ------------------------------------------------------------------ chunks
    def _advance(self, act: _Active, deadline: float) -> None:
        """Drive `act` until its current chunk is received (stage "have")."""
        ch = act.ch
        if act.stage == "header":
            if not settled([ch.header], deadline):
                raise self._timeout(act, "chunk header")
            h, ints = self._take_header(ch, act, act.mode)
            self._use_ints(act, h, ints)
        if act.stage == "ready":
            self._pull(act)
        if act.stage == "rows":
            self._await_rows(act, deadline)
            act.stage = "have"

    def _pull(self, act: _Active) -> None:
        """Post the receives of the answer (the chunk's rows, the next header), send the PULL."""
        ch, h = act.ch, act.header
        if h.row_count:
            start = h.row_offset * row_nbytes(h) if act.mode == "recv" else self._staging_ints
            region = (act.rows_buf if act.mode == "recv" else self._staging)[start:]
            if self._cuda:  # NCCL: exactly the count (and dtype) sent
                region = region[: h.embed_bytes].view(CODE_DTYPES[h.embed_dtype])
            act.region = region
            if not self._cuda:  # see "Message lengths" in protocol.py
                end = h.embed_bytes
                marks = bytes([255 - h.rows_tail]) + ch.canary
                region[end - 1 : end + 8].copy_(torch.frombuffer(bytearray(marks), dtype=torch.uint8))
        ctrl = Control(kind=KIND_PULL, request_id=act.request_id, offset=act.acked)
        post_rows = (lambda: ch.data_waiter.submit([(ch.link.irecv(act.region, self.data_tag), act.region)])
                     ) if h.row_count else (lambda: [])
        if self._ask_first:
            ch.header = self._control(ch, ctrl, expect_header=True)[0]
            act.data = post_rows()
        else:
            act.data = post_rows()
            ch.header = self._control(ch, ctrl, expect_header=True)[0]
        act.stage = "rows"

    def _await_rows(self, act: _Active, deadline: float) -> None:
        """Wait for the chunk's rows (a refusal of the pull ends the wait), then check their length."""
        ch, h = act.ch, act.header
        with self._cond:
            while not all(p.done() for p in act.data):
                if ch.header is not None and ch.header.done() and ch.header.error is None:
                    words = ch.buf[:HEADER_BYTES].view(torch.int64).tolist()
                    if words[2] == KIND_ERROR:
                        self._active = None
                        self._take_header(ch, act, act.mode)  # raises, naming the refusal
                if remaining(deadline) <= 0:
                    raise self._timeout(act, "chunk data")
                self._cond.wait(remaining(deadline))
        for p in act.data:
            if p.error is not None:
                ch.broken, self._active = p.error, None
                raise TransferError(f"{req_name(act.request_id)} at token offset {act.acked}: receive from rank "
                                    f"{ch.peer} failed: {p.error}", act.request_id, "connection") from p.error
        act.data = None
        if h.row_count and not self._cuda:
            end = h.embed_bytes
            got = act.region[end - 1 : end + 8].numpy().tobytes()
            problem = ("ended before" if got[0] != h.rows_tail else "ran past" if got[1:] != ch.canary else None)
            if problem is not None:
                if not h.last:  # the sender sent the next chunk's header after these rows: drop it when it lands
                    ch.stale = act.request_id
                err = mismatch(act.request_id, "embed_bytes", h.embed_bytes, f"the rows message's length: it "
                               f"{problem} the {h.embed_bytes} bytes its header announces", act.acked)
                self._reject(ch, act.request_id, err)
                raise err

    def _ack(self, act: _Active) -> bool:
        """Acknowledge the received chunk (the next PULL carries it). True when the request is done."""
        h = act.header
        act.acked += h.token_count
        act.rows_acked += h.row_count
        act.stage = "header"
        if not h.last:
            return False
        self._active = None
        self._control(act.ch, Control(kind=KIND_ACK, request_id=act.request_id, total=act.acked))
        return True

    def _stream(self, act: _Active, timeout: float | None) -> Iterator[EncoderOutputChunk]:
        while True:
            self._advance(act, self._deadline(timeout))
            h = act.header
            parts = split_ints(self._staging[: h.int_bytes].view(torch.int64), h)
            rows = (self._staging[self._staging_ints : self._staging_ints + h.embed_bytes]
                    .view(CODE_DTYPES[h.embed_dtype]).view(h.row_count, 1 + h.num_deepstack_levels, h.hidden_size))
            visual, deepstack = visual_rows_to_fields(rows)
            yield EncoderOutputChunk(
                request_id=act.request_id, peer=act.ch.peer, chunk_index=h.token_offset // self.capacity_tokens,
                token_offset=h.token_offset, token_count=h.token_count, total_tokens=h.total_tokens,
                batch_size=h.batch_size, seq_len=h.seq_len, input_ids=parts.ids, position_ids=parts.pos,
                attention_mask=parts.mask, mask_dtype=None if h.mask_dtype == NONE_ID else CODE_DTYPES[h.mask_dtype],
                rope_deltas=act.rope, visual_row_offset=h.row_offset, visual_embeds=visual,
                deepstack_visual_embeds=deepstack, image_token_id=token_id(h.image_token_id),
                video_token_id=token_id(h.video_token_id), is_last=h.last)
            if self._ack(act):  # the consumer came back for more: the chunk is consumed
                return

    def _timeout(self, act: _Active, what: str) -> TransferTimeout:
        return TransferTimeout(f"{req_name(act.request_id)}: no {what} at token offset {act.acked} from rank "
                               f"{act.ch.peer} within the timeout; call recv()/resume({act.request_id}) to continue",
                               act.request_id, act.acked)

    # ------------------------------------------------------------------ wire
    def _control(self, ch: _Channel, ctrl: Control, expect_header: bool = False) -> list[Pending]:
        """Send `ctrl` (after posting the receive of the header that answers it, if any)."""
        ctrl.capacity, ctrl.header_bytes = self.capacity_tokens, self.header_bytes
        items = []
        if expect_header:
            if ch.dirty:  # fill what the last header message covered again (see protocol.py)
                ch.buf[: ch.dirty].view(torch.int64).fill_(ch.fill)
                ch.dirty = 0
            items.append((ch.link.irecv(ch.buf, self.header_tag), ch.buf))
        t = ctrl.to_tensor()
        items.append((ch.link.isend(t, self.ctrl_tag), t))
        self.ctrl_bytes_sent += CONTROL_WORDS * 8
        return ch.header_waiter.submit(items)


__all__ = ["EncoderOutputReceiver", "EncoderOutputChunk"]
