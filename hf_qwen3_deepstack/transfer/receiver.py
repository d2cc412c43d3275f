"""Language side: `EncoderOutputReceiver` pulls chunks into a preallocated staging buffer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.distributed as dist

from ..encoder_output import EncoderOutput
from ._wait import Pending, Waiter, remaining, wait_all
from .chunking import (
    ChunkViews,
    count_visual,
    direct_views,
    embed_nbytes,
    empty_result,
    inline_result,
    int_numel,
    data_sizes,
    scatter_chunk,
    split_ints,
    token_id,
    staging_nbytes,
    staging_views,
)
from .link import PeerLink
from .protocol import (
    CODE_DTYPES,
    CONTROL_WORDS,
    EMBED_DTYPES,
    ERROR_NAMES,
    HEADER_BYTES,
    KIND_ACK,
    KIND_BYE,
    KIND_CHUNK,
    KIND_CLOSE,
    KIND_ERROR,
    KIND_PULL,
    KIND_REJECT,
    MASK_DTYPES,
    NEXT,
    NONE_ID,
    PULL_DATA_ONLY,
    PULL_DESCRIBE_NEXT,
    PULL_PUSH,
    ChunkHeader,
    Control,
    HeaderMismatch,
    PeerClosed,
    TransferError,
    TransferTimeout,
    dtype_code,
    expect_field,
    mismatch,
    req_name,
)
from .sender import DEFAULT_TAG

_HEADER_FIELDS = [f.name for f in fields(ChunkHeader)]
_SAME_AS_FIRST = ("total_tokens", "batch_size", "seq_len", "num_visual", "num_deepstack_levels", "hidden_size",
                  "embed_dtype", "mask_dtype", "image_token_id", "video_token_id")  # every chunk agrees with the first
INLINE_BYTES = 1 << 20  # default on CPU: one-chunk requests up to 1 MiB arrive in one message


@dataclass
class EncoderOutputChunk:
    """One received chunk (`recv_chunks`). Tensors are views into the staging buffer, valid until
    the iterator advances. Token ranges index the flattened (B*S) order."""

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
    """Per-peer state: header buffer, the outstanding header receive, waiter threads."""

    def __init__(self, link: PeerLink, cond: threading.Condition, inline_bytes: int):
        self.peer = link.peer
        self.link = link
        # a header, or a first header + the whole (small) request inline; host memory on every
        # device (headers and control messages travel on the group's CPU backend)
        self.header_buf = torch.empty(HEADER_BYTES + inline_bytes, dtype=torch.uint8)
        # headers and control sends complete on one thread, data on another: a refused pull (ERROR
        # header) is seen while its data receives are still posted
        self.header_waiter = Waiter(f"rx-hdr-{self.peer}", cond)
        self.data_waiter = Waiter(f"rx-data-{self.peer}", cond)
        self.header: Pending | None = None  # outstanding header receive
        self.closed = False  # sender said BYE
        self.broken: BaseException | None = None

    def parse_header(self, request_id: int) -> ChunkHeader:
        return ChunkHeader.from_tensor(self.header_buf[:HEADER_BYTES].view(torch.int64), request_id)

    def stop(self, timeout: float | None = None) -> None:
        self.header_waiter.stop(timeout)
        self.data_waiter.stop(timeout)


@dataclass
class _Active:
    """The request being received (at most one per receiver: staging holds one chunk)."""

    ch: _Channel
    request_id: int
    first: ChunkHeader
    mode: str  # "recv" (assemble) or "stream" (recv_chunks)
    result: EncoderOutput | None
    rope: torch.Tensor  # (B, 1)
    acked: int = 0  # tokens acknowledged
    rows_acked: int = 0
    chunks: int = 0
    zero_copy: bool = False  # `result` is a view of the buffer the request arrived in
    pushed: bool = False  # the sender sent the whole request unasked (no pulls)
    int_block: torch.Tensor | None = None  # the result's ints in wire layout (one-chunk requests)
    rows: torch.Tensor | None = None  # the result's (N, 1+K, H) token-major rows
    header: ChunkHeader | None = None  # header of the chunk in progress
    views: ChunkViews | None = None
    payload: list[Pending] | None = None
    stage: str = "have_header"  # await_header | have_header | await_payload | received | unacked
    # await_header: the header of the chunk at `acked` is being received (posted with the last pull)
    # have_header: it is here, its data not yet asked for; await_payload: data asked for, in flight
    # received: data here, not yet acknowledged; unacked: a recv_chunks() consumer left holding it


class EncoderOutputReceiver:
    """Receive `EncoderOutput`s from one or several sender ranks (see the package docstring).

    `inline_bytes`: data bytes a header's message may carry after it (a whole one-chunk request, or
    a chunk's int section): default 1 MiB on CPU/gloo; must be 0 on CUDA (headers arrive in host
    memory, over the group's CPU backend, and a CUDA receiver's data lands on its device; a
    ValueError otherwise); 0 always asks header, then data.
    `push`: asking for the next request, ask the sender to send all of it (every chunk's header and
    data) without further pulls; each message still leaves only when this side posts its receive
    (gloo's rendezvous), a chunk at a time. Default: on for CPU/gloo, off for CUDA (there every
    chunk is pulled)."""

    def __init__(
        self,
        peer: int | Sequence[int],
        group: dist.ProcessGroup | None = None,
        *,
        capacity_tokens: int,
        device: torch.device | str | None = None,
        timeout: float = 60.0,
        hidden_size: int | None = None,
        num_deepstack_levels: int | None = None,
        dtype: torch.dtype | None = None,
        max_batch_size: int = 1024,
        tag: int = DEFAULT_TAG,
        inline_bytes: int | None = None,
        push: bool | None = None,
    ):
        if capacity_tokens <= 0:
            raise ValueError("capacity_tokens must be positive")
        if dtype is not None and dtype not in EMBED_DTYPES:
            raise ValueError(f"dtype {dtype} is not an embedding dtype")
        peers = [peer] if isinstance(peer, int) else list(peer)
        self.peers = peers
        self.group = group
        self.capacity_tokens = capacity_tokens
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.timeout = timeout
        self.hidden_size = hidden_size
        self.num_deepstack_levels = num_deepstack_levels
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.ctrl_tag, self.data_tag, self.header_tag = tag + 1, tag + 2, tag + 3
        if inline_bytes is None:  # data after a header lands in host memory: CPU receivers only
            inline_bytes = INLINE_BYTES if self.device.type == "cpu" else 0
        if inline_bytes < 0 or (inline_bytes and self.device.type != "cpu"):
            raise ValueError(f"inline_bytes={inline_bytes} on device {self.device}: it must be 0 for CUDA receivers "
                             "(headers arrive in host memory, data must land on the device) and >= 0 on CPU")
        self.inline_bytes = inline_bytes
        self.push = self.device.type == "cpu" if push is None else push
        self._ask_first = self.device.type == "cuda"  # see _request_data
        self._cond = threading.Condition()
        links = [PeerLink(p, group) for p in peers]  # every peer checked before any thread starts
        self._channels = [_Channel(link, self._cond, inline_bytes) for link in links]
        self._rr = 0
        self._active: _Active | None = None
        self._staging: torch.Tensor | None = None
        self._pool: torch.Tensor | None = None  # a recycled embedding buffer (see recycle())
        self._header_pool: list[torch.Tensor] = []  # recycled inline buffers
        self._owned: dict[int, bool] = {}  # storage pointer of recent results -> arrived inline
        self.last_peer: int | None = None
        self.bytes_received = 0  # headers + data
        self.payload_bytes_received = 0
        self.ctrl_bytes_sent = 0
        self.requests_received = 0
        if None not in (hidden_size, num_deepstack_levels, dtype):
            self._allocate()

    # ------------------------------------------------------------------ public API
    @property
    def staging_nbytes(self) -> int:
        return 0 if self._staging is None else self._staging.numel()

    @property
    def interrupted(self) -> int | None:
        """Request id of an interrupted (started, unfinished) request, else None."""
        return None if self._active is None else self._active.request_id

    def recv(self, timeout: float | None = None) -> tuple[int, EncoderOutput]:
        """Receive the next request whole (resuming an interrupted one first)."""
        deadline = self._deadline(timeout)
        act = self._active or self._start(deadline, "recv")
        self._check_mode(act, "recv")
        return act.request_id, self._drive_recv(act, deadline)

    def resume(self, request_id: int, timeout: float | None = None):
        """Continue the interrupted request `request_id` from its acknowledged offset. Returns what
        the call that started it returns: `(request_id, EncoderOutput)` for `recv()`, or a chunk
        iterator for `recv_chunks()`."""
        act = self._active
        if act is None or act.request_id != request_id:
            raise TransferError(f"{req_name(request_id)}: nothing to resume (interrupted: {self.interrupted})",
                                request_id, "request_id")
        return self.recv(timeout) if act.mode == "recv" else self.recv_chunks(timeout)

    def recv_chunks(self, timeout: float | None = None) -> Iterator[EncoderOutputChunk]:
        """Stream the next request chunk by chunk (bounded memory). A chunk is acknowledged when
        the consumer asks for the next one; if the consumer stops or raises, the request stays
        interrupted and `recv_chunks()`/`resume()` continue from the acknowledged offset."""
        deadline = self._deadline(timeout)
        act = self._active or self._start(deadline, "stream")
        self._check_mode(act, "stream")
        return self._stream(act, deadline)

    def recycle(self, output: EncoderOutput) -> None:
        """Hand back a result of `recv()` that you no longer use (e.g. after prefill): its embedding
        memory is reused by the next `recv()`, which then avoids page-faulting fresh memory (for a
        64 MB request that costs about as much as the transfer itself). Do not use `output`
        afterwards (a request that arrived inline shares one buffer among all its tensors). One
        embedding buffer is kept (the largest handed back), and up to two inline buffers."""
        key = output.visual_embeds.untyped_storage().data_ptr()
        if key not in self._owned:  # not ours (or handed back already)
            return
        inline = self._owned.pop(key)
        buf = torch.empty(0, dtype=torch.uint8, device=self.device).set_(output.visual_embeds.untyped_storage())
        if inline:
            if len(self._header_pool) < 2:
                self._header_pool.append(buf)
        elif self._pool is None or buf.numel() > self._pool.numel():
            self._pool = buf

    def _take_pooled(self, h: ChunkHeader) -> torch.Tensor | None:
        buf, self._pool = self._pool, None
        return buf

    def poll(self) -> bool:
        """Non-blocking: True if `recv()` has something to work on (a chunk header arrived or a
        request is interrupted). Also posts the pulls for the next request on idle channels."""
        if self._active is not None:
            return True
        self._post_next_pulls()
        return any(ch.header is not None and ch.header.done() for ch in self._channels)

    def close(self, timeout: float | None = None) -> None:
        """Tell every sender we are gone and wait for outstanding receives and that message to
        complete: `dist.destroy_process_group()` may follow at once."""
        deadline = self._deadline(timeout)
        for ch in self._channels:
            if ch.broken is not None:
                continue
            try:  # waiting for what was asked for (or pushed, drained) leaves nothing posted or pending
                act = self._active
                if act is not None and act.ch is ch:
                    if act.payload:
                        wait_all(act.payload, deadline)
                    if act.pushed and act.stage == "have_header":  # its data not asked for yet
                        self._drain_pushed(ch, act.header, deadline)
                sent = self._send_ctrl(ch, Control(kind=KIND_CLOSE, capacity=self.capacity_tokens))
                # the header being received: a BYE, or a chunk of a pushed request (the next chunk of
                # the unfinished one, or the next request's first): then the rest of it follows
                if ch.header is not None and wait_all([ch.header], deadline):
                    p, ch.header = ch.header, None
                    h = ch.parse_header(NEXT) if p.error is None and self.push else None
                    if h is not None and h.kind == KIND_CHUNK and not h.inline:
                        self._drain_pushed(ch, h, deadline)
                wait_all(sent, deadline)
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass
        for ch in self._channels:  # their threads are done with every work before the group may go
            ch.stop(remaining(deadline))
        self._active = None

    def __enter__(self) -> "EncoderOutputReceiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ request start
    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _check_mode(self, act: _Active, mode: str) -> None:
        if act.mode != mode:
            call = "recv()" if act.mode == "recv" else "recv_chunks()"
            raise TransferError(f"{req_name(act.request_id)} is interrupted in {call}; resume it with {call} "
                                f"or resume({act.request_id})", act.request_id, "mode")

    def _post_next_pulls(self) -> None:
        for ch in self._channels:
            if ch.header is None and not ch.closed and ch.broken is None:
                self._pull(ch, self._describe_next())

    def _describe_next(self, done: _Active | None = None) -> Control:
        ctrl = Control(kind=KIND_PULL, request_id=NEXT, capacity=self.capacity_tokens, inline_bytes=self.inline_bytes,
                       flags=PULL_PUSH if self.push else 0)
        if done is not None:
            ctrl.done_request_id, ctrl.done_total = done.request_id, done.first.total_tokens
        return ctrl

    def _start(self, deadline: float, mode: str) -> _Active:
        while True:
            self._post_next_pulls()
            live = [ch for ch in self._channels if not ch.closed and ch.broken is None]
            if not live:
                broken = [ch.broken for ch in self._channels if ch.broken is not None]
                if broken:
                    raise TransferError(f"every channel is down: {broken[0]}") from broken[0]
                raise PeerClosed(f"all senders {self.peers} closed")
            ch = self._ready_channel(live, deadline)
            h = self._take_header(ch, NEXT, 0)
            if h.kind == KIND_BYE:
                ch.closed = True
                continue
            try:
                self._validate_first(ch, h)
            except HeaderMismatch:
                if self.push and not h.inline:  # the request was sent whole: take it off the wire
                    self._drain_pushed(ch, h, deadline)
                raise
            if h.inline:
                return self._start_inline(ch, h, mode)
            self._active = self._begin(ch, h, mode)
            self._active.pushed = self.push
            return self._active

    def _begin(self, ch: _Channel, h: ChunkHeader, mode: str) -> _Active:
        """State of a request whose (validated, not inline) first header `h` came from `ch`."""
        self.last_peer = ch.peer
        if mode != "recv":
            rope = torch.empty(h.batch_size, 1, dtype=torch.int64, device=self.device)
            return _Active(ch, h.request_id, h, mode, None, rope, header=h)
        result, rows, block = empty_result(h, self.device, self._take_pooled(h))
        if rows.untyped_storage().nbytes():
            self._owned[rows.untyped_storage().data_ptr()] = False
        return _Active(ch, h.request_id, h, mode, result, result.rope_deltas, header=h, int_block=block, rows=rows)

    def _start_inline(self, ch: _Channel, h: ChunkHeader, mode: str) -> _Active:
        """The whole request came with its header. `recv()` returns views of that buffer (the
        channel takes a fresh one); `recv_chunks()` yields them as its only chunk."""
        views = staging_views(ch.header_buf[HEADER_BYTES:], h)
        parts = split_ints(views.ints, h)
        self.bytes_received += h.int_bytes + h.embed_bytes
        self.payload_bytes_received += h.int_bytes + h.embed_bytes
        rope = parts.rope.view(h.batch_size, 1)
        act = self._active = _Active(ch, h.request_id, h, mode, None, rope, header=h, views=views, stage="received")
        self.last_peer = ch.peer
        self._check_rows(act, parts.ids)
        if mode == "recv":
            act.result, act.zero_copy = inline_result(views, parts, h), True
            self._owned[ch.header_buf.untyped_storage().data_ptr()] = True
            ch.header_buf = (self._header_pool.pop() if self._header_pool
                             else torch.empty_like(ch.header_buf))
        return act

    def _ready_channel(self, live: list[_Channel], deadline: float) -> _Channel:
        n = len(live)
        with self._cond:
            while True:
                for i in range(n):
                    ch = live[(self._rr + i) % n]
                    if ch.header is not None and ch.header.done():
                        self._rr = (self._rr + i + 1) % n
                        return ch
                left = remaining(deadline)
                if left <= 0:
                    peers = [c.peer for c in live]
                    raise TransferTimeout(
                        f"request <next>: no chunk at token offset 0 from rank(s) {peers} within the timeout",
                        NEXT, 0)
                self._cond.wait(left)

    def _take_header(self, ch: _Channel, request_id: int, offset: int) -> ChunkHeader:
        """Parse the completed header of `ch` (BYE/ERROR handled), validate its envelope."""
        p, ch.header = ch.header, None
        if p.error is not None:
            ch.broken = p.error
            raise TransferError(f"{req_name(request_id)} at token offset {offset}: receive from rank {ch.peer} "
                                f"failed: {p.error}", request_id, "connection") from p.error
        self.bytes_received += HEADER_BYTES
        try:
            h = ch.parse_header(request_id)
        except HeaderMismatch:
            ch.broken = TransferError("corrupt header")
            raise
        if h.kind == KIND_ERROR:
            what = ERROR_NAMES.get(h.error_code, str(h.error_code))
            raise TransferError(f"{req_name(h.request_id)} at token offset {h.token_offset}: sender rank {ch.peer} "
                                f"refused the pull ({what})", h.request_id, what)
        if h.kind not in (KIND_CHUNK, KIND_BYE):
            ch.broken = TransferError("bad header kind")
            raise mismatch(request_id, "kind", h.kind, KIND_CHUNK, offset)
        return h

    # ------------------------------------------------------------------ validation
    def _allocate(self) -> None:
        # without an explicit dtype, size for 4-byte elements: fp32, bf16 and fp16 all fit
        self._staging = torch.empty(
            staging_nbytes(self.capacity_tokens, self.max_batch_size, self.num_deepstack_levels or 0,
                           self.hidden_size or 0, self.dtype or torch.float32),
            dtype=torch.uint8, device=self.device)

    def _validate_first(self, ch: _Channel, h: ChunkHeader) -> None:
        rid = h.request_id
        try:
            if rid < 0:
                raise mismatch(rid, "request_id", rid, ">= 0", 0)
            if not h.first or h.token_offset != 0 or h.chunk_index != 0:
                raise mismatch(rid, "token_offset", h.token_offset, 0, 0)
            if h.embed_dtype not in CODE_DTYPES or CODE_DTYPES[h.embed_dtype] not in EMBED_DTYPES:
                raise mismatch(rid, "embed_dtype", h.embed_dtype, "an embedding dtype code", 0)
            if h.mask_dtype != NONE_ID and CODE_DTYPES.get(h.mask_dtype) not in MASK_DTYPES:
                raise mismatch(rid, "mask_dtype", h.mask_dtype, "an integer/bool dtype code", 0)
            for name, want in (("hidden_size", self.hidden_size), ("num_deepstack_levels", self.num_deepstack_levels)):
                if want is not None:
                    expect_field(h, name, want, 0)
            if self.dtype is not None:
                expect_field(h, "embed_dtype", dtype_code(self.dtype), 0)
            if h.data_device_type != self.device.type:  # else its data could never match our receives
                raise mismatch(rid, "flags", f"{h.flags} (data on {h.data_device_type})",
                               f"data on {self.device.type}, this receiver's device (give the receiver a "
                               f"device= of the sender's data device type)", 0)
            if h.batch_size > self.max_batch_size:
                raise mismatch(rid, "batch_size", h.batch_size, f"<= max_batch_size={self.max_batch_size}", 0)
            if h.total_tokens != h.batch_size * h.seq_len or min(h.batch_size, h.seq_len, h.num_visual) < 0:
                raise mismatch(rid, "total_tokens", h.total_tokens, h.batch_size * h.seq_len, 0)
            if h.num_visual and h.image_token_id == NONE_ID and h.video_token_id == NONE_ID:
                raise mismatch(rid, "num_visual", h.num_visual, "0 (no image/video token id)", 0)
            if self._staging is None:  # learn the shape expectations from the first request
                self.hidden_size, self.num_deepstack_levels = h.hidden_size, h.num_deepstack_levels
                self._allocate()
        except HeaderMismatch as e:
            self._reject(ch, h, e)
            raise
        self._validate_chunk(ch, h, rid, 0, 0, h)

    def _validate_chunk(self, ch: _Channel, h: ChunkHeader, rid: int, offset: int, rows: int,
                        first: ChunkHeader) -> None:
        """Every chunk: identity, offset/count, and agreement with the first chunk."""
        try:
            expect_field(h, "request_id", rid, offset)
            expect_field(h, "token_offset", offset, offset)
            expect_field(h, "token_count", min(self.capacity_tokens, first.total_tokens - offset), offset)
            for name in () if first is h else _SAME_AS_FIRST:
                expect_field(h, name, getattr(first, name), offset)
            expect_field(h, "row_offset", rows, offset)
            if h.row_count < 0 or h.row_count > h.token_count or rows + h.row_count > first.num_visual:
                raise mismatch(rid, "row_count", h.row_count, f"<= {min(h.token_count, first.num_visual - rows)}",
                               offset)
            expect_field(h, "int_bytes", 8 * int_numel(h), offset)
            expect_field(h, "embed_bytes", embed_nbytes(h), offset)
            expect_field(h, "last", offset + h.token_count >= first.total_tokens, offset)
            if h.int_bytes + h.embed_bytes > self._staging.numel():
                raise mismatch(rid, "embed_dtype", CODE_DTYPES[h.embed_dtype],
                               f"a dtype whose chunk fits the {self._staging.numel()}-byte staging buffer", offset)
            if h.inline and (not (h.first and h.last) or h.int_bytes + h.embed_bytes > self.inline_bytes):
                raise mismatch(rid, "flags", h.flags, f"inline data only for a one-chunk request of at most "
                               f"{self.inline_bytes} bytes", offset)
            if h.pulled and h.inline:
                raise mismatch(rid, "flags", h.flags, "inline data or data sent when pulled, not both", offset)
            if h.ints_inline and (h.inline or h.packed or h.int_bytes > self.inline_bytes):
                raise mismatch(rid, "flags", h.flags, f"an int section with the header only when it fits "
                               f"{self.inline_bytes} bytes, without inline or packed data", offset)
        except HeaderMismatch as e:
            self._reject(ch, h, e)
            raise

    def _reject(self, ch: _Channel, h: ChunkHeader, err: HeaderMismatch) -> None:
        """Tell the sender a well-formed header is unacceptable and drop the request. No data
        follows a header unasked (inline data came in the same message), so nothing is drained."""
        try:
            field = err.field if err.field in _HEADER_FIELDS else "flags"
            self._send_ctrl(ch, Control(kind=KIND_REJECT, request_id=h.request_id, offset=h.token_offset,
                                        capacity=self.capacity_tokens, reason=_HEADER_FIELDS.index(field)))
        except Exception as e:  # noqa: BLE001 - cannot resynchronise: the channel is unusable
            ch.broken = e
        if self._active is not None and self._active.request_id == h.request_id and self._active.ch is ch:
            self._active = None

    # ------------------------------------------------------------------ chunk loop
    def _advance(self, act: _Active, deadline: float) -> None:
        """Drive `act` until its current chunk is received (stage 'received')."""
        ch = act.ch
        if act.stage == "unacked":  # consumer raised: the chunk again (pushed: it is still in staging)
            if act.pushed:
                act.stage = "received"
                return
            self._request_data(act, resend=True)
        if act.stage == "await_header":
            if not wait_all([ch.header], deadline):
                raise self._timeout(act)
            h = self._take_header(ch, act.request_id, act.acked)
            if h.kind == KIND_BYE:
                ch.closed = True
                raise PeerClosed(f"{req_name(act.request_id)} at token offset {act.acked}: sender rank {ch.peer} "
                                 f"closed mid-request", act.request_id, "bye")
            try:
                self._validate_chunk(ch, h, act.request_id, act.acked, act.rows_acked, act.first)
            except HeaderMismatch:
                if act.pushed:  # this chunk's data and the rest are on their way: take them off the wire
                    self._drain_pushed(ch, h, deadline)
                raise
            act.header, act.stage = h, "have_header"
        if act.stage == "have_header":
            self._request_data(act)
        if act.stage == "await_payload":
            self._await_payload(act, deadline)
            nbytes = sum(p.nbytes for p in act.payload)
            self.bytes_received += nbytes
            self.payload_bytes_received += nbytes
            act.payload = None
            self._check_rows(act, split_ints(act.views.ints, act.header).ids)
            act.stage = "received"

    def _request_data(self, act: _Active, resend: bool = False) -> None:
        """Post the receives for the data of the chunk at `act.acked` (and for the header after it),
        then pull it: on gloo the sender only sends into receives that are already posted. In a
        pushed request only a `FLAG_PULLED` chunk is pulled; posting the receives asks for the others.
        CUDA receivers ask first and post after: NCCL may create the pair's communicator in the
        first data operation of each side, which blocks until the peer's first one, and the
        sender's waits for the ask (an NCCL send waits on the GPU for its receive anyway)."""
        ch, h = act.ch, act.header
        act.views = views = (direct_views(self._staging, h, act.rows, act.int_block) if act.result is not None
                             else staging_views(self._staging, h))
        targets = views.targets
        if h.ints_inline:  # the int section came with the header: keep it before the next header lands
            targets = [t for t in targets if t is not views.ints]
            if not resend:
                views.ints.copy_(ch.header_buf[HEADER_BYTES : HEADER_BYTES + h.int_bytes].view(torch.int64))
                self.bytes_received += h.int_bytes
                self.payload_bytes_received += h.int_bytes
        act.stage = "await_payload"
        pull = Control(kind=KIND_PULL, request_id=act.request_id, offset=act.acked, capacity=self.capacity_tokens,
                       inline_bytes=self.inline_bytes)
        next_header = False  # the next chunk's header receive goes with the data (same thread, one wake-up)
        if act.pushed:  # the sender sent the whole request unasked (large data: when pulled)
            if h.last and h.pulled:  # with the next request's describe (the header prefetch)
                pull.flags = PULL_DESCRIBE_NEXT | PULL_PUSH
                ask = partial(self._pull, ch, pull)
            elif h.last:
                ask = partial(self._pull, ch, self._describe_next())
            else:
                next_header = True
                pull.flags = PULL_DATA_ONLY
                ask = partial(self._send_ctrl, ch, pull) if h.pulled else None
        else:
            if resend or ch.header is not None:  # the next header is here or on its way already
                pull.flags = PULL_DATA_ONLY
            elif h.last:
                pull.flags = PULL_DESCRIBE_NEXT  # prefetch the next request's first header
            ask = partial(self._pull, ch, pull, expect_header=not pull.flags & PULL_DATA_ONLY)
        ask_first = ask is not None and self._ask_first
        if ask_first:
            ask()
        items = [(self._irecv(ch, t, self.data_tag), t, t.numel() * t.element_size()) for t in targets]
        act.payload = self._submit_data(ch, items, next_header)
        if ask is not None and not ask_first:
            ask()

    def _await_payload(self, act: _Active, deadline: float) -> None:
        """Wait for the chunk's data; a sender's refusal (ERROR header) ends the wait early."""
        ch = act.ch
        with self._cond:
            while not all(p.done() for p in act.payload):
                if ch.header is not None and ch.header.done() and ch.header.error is None:
                    peek = ch.parse_header(act.request_id)
                    if peek.kind == KIND_ERROR:  # its data receives stay posted: the channel is unusable
                        ch.broken = TransferError("sender refused a pull")
                        self._active = None
                        self._take_header(ch, act.request_id, act.acked)  # raises, naming the refusal
                left = remaining(deadline)
                if left <= 0:
                    raise self._timeout(act)
                self._cond.wait(left)
        for p in act.payload:
            if p.error is not None:
                ch.broken = p.error
                self._active = None
                raise TransferError(f"{req_name(act.request_id)} at token offset {act.acked}: receive from rank "
                                    f"{ch.peer} failed: {p.error}", act.request_id, "connection") from p.error

    def _check_rows(self, act: _Active, ids: torch.Tensor) -> None:
        """The chunk's `ids` must hold as many placeholders as it carries visual rows; else the
        request is rejected (the sender's handle fails naming `row_count`)."""
        h = act.header
        seen = count_visual(ids, h)
        if seen == h.row_count:
            return
        err = mismatch(act.request_id, "row_count", h.row_count, f"{seen} (placeholders in the chunk's ids)", act.acked)
        ch = act.ch
        if not h.last and act.pushed:  # the rest of the request is on its way: take it off the wire
            self._drain_pushed(ch, None, self._deadline(None))
        elif not h.last and ch.header is not None:  # the next chunk's header is on its way: let it land
            wait_all([ch.header], self._deadline(None))
            ch.header = None
        self._reject(ch, h, err)
        raise err

    def _drain_pushed(self, ch: _Channel, h: ChunkHeader | None, deadline: float) -> None:
        """Receive and discard what the sender pushed of a request being dropped (rejected, or
        this side closing): from the data of chunk `h`, or (None) from the header being received,
        to the request's last chunk, so that no send of it stays pending and the channel stays in
        step. If that cannot be done the channel is marked broken."""
        try:
            while True:
                if h is None:
                    if ch.header is None or not wait_all([ch.header], deadline):
                        raise TransferError("no pushed chunk header to drain within the timeout")
                    ch.header = None
                    h = ch.parse_header(NEXT)
                    if h.kind != KIND_CHUNK:
                        raise TransferError(f"header kind {h.kind} while draining")
                sizes = [] if h.pulled else data_sizes(h)  # (a pulled chunk's data was not asked for)
                if sum(sizes) > max(1 << 30, 4 * self.staging_nbytes):
                    raise TransferError(f"{sum(sizes)} bytes of pushed data to drain")
                scratch = [torch.empty(n, dtype=torch.uint8, device=self.device) for n in sizes]
                items = [(self._irecv(ch, t, self.data_tag), t, t.numel()) for t in scratch]
                if not wait_all(self._submit_data(ch, items, not h.last), deadline):
                    raise TransferError("pushed chunk data not drained within the timeout")
                if h.last:
                    return
                h = None
        except Exception as e:  # noqa: BLE001 - out of step with the sender: the channel is unusable
            ch.broken = ch.broken or e

    def _submit_data(self, ch: _Channel, items: list[tuple], next_header: bool) -> list[Pending]:
        """Hand posted data receives to the data waiter, with the receive of the next chunk's
        header when `next_header` (same thread, one wake-up); returns the data's pendings."""
        if next_header:
            self._wait_posted(ch)
            items.append((self._irecv(ch, ch.header_buf, self.header_tag), None, 0))
        pend = ch.data_waiter.submit_many(items)
        if not next_header:
            return pend
        ch.header = pend[-1]
        return pend[:-1]  # a copy: the waiter iterates `pend` itself

    def _timeout(self, act: _Active) -> TransferTimeout:
        what = "chunk header" if act.stage == "await_header" else "chunk data"
        return TransferTimeout(
            f"{req_name(act.request_id)}: no {what} at token offset {act.acked} from rank {act.ch.peer} within the "
            f"timeout; call recv()/resume({act.request_id}) to continue", act.request_id, act.acked)

    def _ack(self, act: _Active) -> bool:
        """Acknowledge the received chunk. True when the request is complete. (The next chunk's
        data pull, sent once its header is here, carries the acknowledgement of this one.)"""
        h = act.header
        act.acked += h.token_count
        act.rows_acked += h.row_count
        act.chunks += 1
        act.stage = "await_header"
        if not h.last:
            return False
        self._active = None
        self.requests_received += 1
        if len(self._owned) > 64:  # results never recycled: forget the oldest
            self._owned.pop(next(iter(self._owned)))
        ch = act.ch
        describe = ch.header is None  # next request not prefetched: final ack + describe-next in one message
        if describe:
            ctrl = self._describe_next(done=act)
        else:
            ctrl = Control(kind=KIND_ACK, request_id=act.request_id, capacity=self.capacity_tokens,
                           done_request_id=act.request_id, done_total=act.first.total_tokens)
        # the data waiter (idle now: all data is here) posts the final message, so recv() returns
        # without paying for it; later control messages wait until it is posted (order)
        t, buf = self._control_tensor(ctrl), ch.header_buf

        def post() -> list[tuple]:
            header = (self._irecv(ch, buf, self.header_tag), None, 0) if describe else None
            sent = self._isend_ctrl(ch, t)
            return [sent, header] if describe else [sent]

        pend = ch.data_waiter.submit_posting(post, 1 + describe)
        if describe:
            ch.header = pend[1]
        return True

    def _drive_recv(self, act: _Active, deadline: float) -> EncoderOutput:
        while True:
            self._advance(act, deadline)
            if not act.zero_copy:
                scatter_chunk(act.views, act.header, act.result, act.rows)
            if self._ack(act):
                return act.result

    def _stream(self, act: _Active, deadline: float) -> Iterator[EncoderOutputChunk]:
        while True:
            self._advance(act, deadline)
            h, v = act.header, act.views
            parts = split_ints(v.ints, h)
            if parts.rope is not None:
                act.rope.view(-1).copy_(parts.rope)
            chunk = EncoderOutputChunk(
                request_id=act.request_id, peer=act.ch.peer, chunk_index=act.chunks, token_offset=h.token_offset,
                token_count=h.token_count, total_tokens=h.total_tokens, batch_size=h.batch_size,
                seq_len=h.seq_len, input_ids=parts.ids, position_ids=parts.pos, attention_mask=parts.mask,
                mask_dtype=None if h.mask_dtype == NONE_ID else CODE_DTYPES[h.mask_dtype], rope_deltas=act.rope,
                visual_row_offset=h.row_offset, visual_embeds=v.visual, deepstack_visual_embeds=v.deepstack,
                image_token_id=token_id(h.image_token_id), video_token_id=token_id(h.video_token_id),
                is_last=h.last)
            act.stage = "unacked"  # until the consumer comes back for more
            yield chunk
            act.stage = "received"
            if self._ack(act):
                return

    # ------------------------------------------------------------------ wire
    def _pull(self, ch: _Channel, ctrl: Control, expect_header: bool = True) -> None:
        """Post the receive of the answer's header (unless none is expected), then send `ctrl`."""
        self._wait_posted(ch)
        items = []
        if expect_header:
            items.append((self._irecv(ch, ch.header_buf, self.header_tag), None, 0))
        items.append(self._post_ctrl(ch, ctrl))
        pend = ch.header_waiter.submit_many(items)
        if expect_header:
            ch.header = pend[0]

    def _send_ctrl(self, ch: _Channel, ctrl: Control) -> list[Pending]:
        return ch.header_waiter.submit_many([self._post_ctrl(ch, ctrl)])

    def _post_ctrl(self, ch: _Channel, ctrl: Control) -> tuple:
        """Post the send of a control message; returns the (work, keep, nbytes) to wait for."""
        t = self._control_tensor(ctrl)
        self._wait_posted(ch)
        return self._isend_ctrl(ch, t)

    def _wait_posted(self, ch: _Channel) -> None:
        """A final message being posted by the data waiter goes first (control messages and header
        receives keep their order)."""
        if not ch.data_waiter.posted.is_set():
            ch.data_waiter.posted.wait(self.timeout)

    def _control_tensor(self, ctrl: Control) -> torch.Tensor:
        self.ctrl_bytes_sent += CONTROL_WORDS * 8
        return ctrl.to_tensor()

    def _isend_ctrl(self, ch: _Channel, t: torch.Tensor) -> tuple:
        return ch.link.isend(t, self.ctrl_tag), t, 0

    def _irecv(self, ch: _Channel, t: torch.Tensor, tag: int):
        return ch.link.irecv(t, tag)


__all__ = ["EncoderOutputReceiver", "EncoderOutputChunk"]
