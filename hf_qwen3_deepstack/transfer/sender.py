"""Encoder side: `EncoderOutputSender` answers the receiver's pulls with chunks of retained requests
(or sends a whole request at once when the receiver asks for pushes)."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..encoder_output import EncoderOutput
from ._wait import Pending, Waiter, block_on, remaining
from .chunking import PUSH_LIMIT, SendPlan, data_sizes
from .link import PeerLink
from .protocol import (
    CONTROL_WORDS,
    ERR_BAD_CONTROL,
    ERR_BAD_OFFSET,
    ERR_UNKNOWN_REQUEST,
    ERROR_NAMES,
    FLAG_INLINE,
    FLAG_INTS,
    FLAG_PULLED,
    HEADER_BYTES,
    KIND_ACK,
    KIND_BYE,
    KIND_CLOSE,
    KIND_ERROR,
    KIND_PULL,
    KIND_REJECT,
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
    req_name,
)

DEFAULT_TAG = 100  # tags: base+1 receiver->sender control, base+2 data, base+3 headers (sender->receiver)


class SendHandle:
    """Completion of one `isend`: done once the receiver acknowledged every token of the request."""

    def __init__(self, request_id: int, total_tokens: int, default_timeout: float):
        self.request_id = request_id
        self.total_tokens = total_tokens
        self.acked_offset = 0
        self._timeout = default_timeout
        self._event = threading.Event()
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> None:
        """Block until fully acknowledged; raise `TransferTimeout` after `timeout` seconds (the
        request stays retained, waiting again is fine) or the transfer's error."""
        timeout = self._timeout if timeout is None else timeout
        if not self._event.wait(timeout):
            raise TransferTimeout(
                f"{req_name(self.request_id)}: not acknowledged within {timeout:g} s "
                f"(acknowledged token offset {self.acked_offset} of {self.total_tokens})",
                self.request_id,
                self.acked_offset,
            )
        if self._error is not None:
            raise self._error

    def _finish(self, error: BaseException | None = None) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()


@dataclass
class _Request:
    request_id: int
    plan: SendPlan
    handle: SendHandle
    ready: torch.cuda.Event | None = None  # CUDA: the request's tensors are written (caller's stream)
    acked: int = 0  # tokens acknowledged by the receiver
    sent: set[int] = field(default_factory=set)  # offsets of the chunks whose data was sent
    described: int = -1  # offset of the furthest chunk whose header was sent


@dataclass
class SenderStats:
    bytes_sent: int = 0  # everything this sender put on the wire: headers + data
    payload_bytes_sent: int = 0  # data bytes (int sections + embedding rows)
    header_bytes_sent: int = 0
    payload_bytes_resent: int = 0  # data of chunks sent again because they were never acknowledged
    chunks_sent: int = 0
    messages_sent: int = 0
    requests_done: int = 0
    inline_requests: int = 0  # one-chunk requests sent inline with their header (one message)
    per_request_bytes: dict[int, int] = field(default_factory=dict)


class EncoderOutputSender:
    """Send `EncoderOutput`s to one receiver rank `peer` (global rank) over `group`.

    Requests are retained until the receiver acknowledged all their tokens. A background worker
    answers the receiver's pulls; `isend` returns at once (blocking only while `max_in_flight`
    requests are unacknowledged), `send` waits for the acknowledgement.
    `on_chunk(request_id, token_offset, token_count)` is called before each chunk's data is posted
    (for a pushed request, when the request is described; for a pulled chunk, when pulled).
    """

    def __init__(
        self,
        peer: int,
        group: dist.ProcessGroup | None = None,
        *,
        timeout: float = 60.0,
        max_in_flight: int = 8,
        tag: int = DEFAULT_TAG,
        device: torch.device | str | None = None,
        on_chunk: Callable[[int, int, int], None] | None = None,
    ):
        self.peer = peer
        self.group = group
        self._link = PeerLink(peer, group)
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.ctrl_tag, self.data_tag, self.header_tag = tag + 1, tag + 2, tag + 3
        self.device = torch.device(device) if device is not None else None
        self.on_chunk = on_chunk
        self.stats = SenderStats()
        # One re-entrant lock guards the state and the issuing of sends: chunks go out either from
        # the control-reader thread (answering a pull) or from `isend` itself (answering a pull
        # that was waiting for a request): no hand-off between threads on the critical path.
        self._cond = threading.Condition(threading.RLock())
        self._requests: dict[int, _Request] = {}
        self._unstarted: collections.deque[_Request] = collections.deque()
        self._pending_next: Control | None = None
        self._closing = False
        self._dead: BaseException | None = None
        self._sends: list[Pending] = []  # issued sends not yet known complete
        # inline requests (one message each): their sends are reaped by the control thread once the
        # receiver's next control message arrives, which it sends only after the message landed
        # (no wake-up of the completion thread on the latency-critical path)
        self._inline_sends: list[tuple[dist.Work, torch.Tensor]] = []
        self._batch: list[tuple] | None = None  # sends being collected for one hand-over (a push)
        self._send_waiter = Waiter(f"tx-send-{peer}")
        self._reader = threading.Thread(target=self._read_loop, name=f"tx-ctrl-{peer}", daemon=True)
        self._reader.start()

    # counters, as attributes for convenience
    @property
    def bytes_sent(self) -> int:
        return self.stats.bytes_sent

    @property
    def payload_bytes_sent(self) -> int:
        return self.stats.payload_bytes_sent

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._requests)

    # ------------------------------------------------------------------ public API
    def isend(self, request_id: int, output: EncoderOutput, timeout: float | None = None) -> SendHandle:
        """Queue `output` as request `request_id`; returns a handle (`wait()`, `done()`)."""
        plan = SendPlan.build(output)
        ready = _ready_event(plan.rows)
        if self.device is None:
            self.device = output.input_ids.device
        plan.cuda = self.device.type == "cuda"  # headers say so: a receiver on another device refuses
        handle = SendHandle(request_id, plan.total, self.timeout)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while len(self._requests) >= self.max_in_flight and self._dead is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransferTimeout(
                        f"{req_name(request_id)}: {len(self._requests)} requests still in flight "
                        f"(max_in_flight={self.max_in_flight}) after {self.timeout:g} s",
                        request_id,
                        0,
                    )
                self._cond.wait(left)
            if self._dead is not None:
                raise TransferError(f"{req_name(request_id)}: channel to rank {self.peer} is down: {self._dead}",
                                    request_id) from self._dead
            if self._closing:
                raise PeerClosed(f"{req_name(request_id)}: sender is closed", request_id)
            if request_id in self._requests or request_id < 0:
                raise TransferError(f"{req_name(request_id)}: request id already in flight or negative", request_id,
                                    "request_id")
            req = _Request(request_id, plan, handle, ready=ready)
            self._requests[request_id] = req
            self._unstarted.append(req)
            if self._pending_next is not None:  # the receiver is waiting: answer from here
                ctrl, self._pending_next = self._pending_next, None
                try:
                    self._describe_next(ctrl)
                except BaseException as e:  # noqa: BLE001
                    self._fail_all(_as_transfer_error(e, self.peer))
            self._cond.notify_all()
        return handle

    def send(self, request_id: int, output: EncoderOutput, timeout: float | None = None) -> None:
        """Blocking: return once the receiver acknowledged the whole request."""
        self.isend(request_id, output, timeout).wait(timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued request is acknowledged."""
        with self._cond:
            handles = [r.handle for r in self._requests.values()]
        for h in handles:
            h.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Wait for in-flight requests, then tell the receiver there is no more (its `recv()` raises
        `PeerClosed`) and wait for its `close()` so that no receive stays posted, and for our last
        sends to complete: `dist.destroy_process_group()` may follow at once."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        try:
            if self._dead is None:
                self.flush(timeout)
        finally:
            with self._cond:
                self._closing = True
                if self._pending_next is not None and self._dead is None:
                    self._pending_next = None
                    try:
                        self._send_header(ChunkHeader(kind=KIND_BYE))
                    except BaseException:  # noqa: BLE001 - best effort on shutdown
                        pass
                self._cond.notify_all()
            self._reader.join(remaining(deadline))  # ends when the receiver's close() arrives
            # every send has completed (its thread is done with it) before the group may be destroyed
            with self._cond:
                inline, self._inline_sends = self._inline_sends, []
            self._send_waiter.submit_many([(work, msg, 0) for work, msg in inline])
            self._send_waiter.stop(remaining(deadline))

    def __enter__(self) -> "EncoderOutputSender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ threads
    def _read_loop(self) -> None:
        def post() -> tuple:  # control messages are host tensors on every device (the CPU backend)
            buf = torch.empty(CONTROL_WORDS, dtype=torch.int64)
            return self._link.irecv(buf, self.ctrl_tag), buf

        try:
            nxt = post()
            while True:
                work, buf = nxt
                block_on(work, False)
                ctrl = Control.from_tensor(buf)
                # the next receive is posted before answering: the receiver's next control message
                # (sent as soon as our answer lands) then never waits for a late-posted receive
                nxt = post() if ctrl.kind != KIND_CLOSE else None
                with self._cond:
                    self._reap_inline_sends()
                    self._check_sends()
                    if self._handle(ctrl):
                        return
        except BaseException as e:  # noqa: BLE001 - fails every waiting handle
            self._fail_all(_as_transfer_error(e, self.peer))

    def _reap_inline_sends(self) -> None:
        """Complete the inline sends posted so far (done by now: see `_inline_sends`)."""
        sends, self._inline_sends = self._inline_sends, []
        for work, _ in sends:
            work.wait()

    def _check_sends(self) -> None:
        for p in self._sends:
            if p.done() and p.error is not None:
                raise p.error
        self._sends = [p for p in self._sends if not p.done()]

    def _handle(self, ctrl: Control) -> bool:
        """Process one control message; True when the worker should exit."""
        if ctrl.done_request_id != NONE_ID:
            self._finish(ctrl.done_request_id, ctrl.done_total)
        if ctrl.kind == KIND_CLOSE:
            if self._pending_next is not None:
                self._pending_next = None
                self._send_header(ChunkHeader(kind=KIND_BYE))
            self._fail_all(PeerClosed(f"receiver rank {self.peer} closed"))
            return True
        if ctrl.kind == KIND_ACK:
            return False
        if ctrl.kind == KIND_REJECT:
            with self._cond:
                req = self._requests.get(ctrl.request_id)
            if req is not None:
                self._reject(req, ctrl.reason)
            return False
        if ctrl.kind != KIND_PULL or ctrl.capacity <= 0:
            self._send_error(ctrl.request_id, ctrl.offset, ERR_BAD_CONTROL)
            return False
        if ctrl.request_id == NEXT:
            self._answer_next(ctrl)
            return False
        return self._answer_pull(ctrl)

    def _answer_next(self, ctrl: Control) -> None:
        """Answer "describe the next request": now, or from the next `isend` (or BYE at close)."""
        if not self._unstarted and not self._closing:
            self._pending_next = ctrl
        else:
            self._describe_next(ctrl)

    def _describe_next(self, ctrl: Control) -> None:
        """Send the first chunk header of the oldest unstarted request; its data too (inline) when
        the whole request is one chunk that fits the receiver's inline allowance, or all of it
        when the receiver asked for pushes (`PULL_PUSH`)."""
        with self._cond:
            req = self._unstarted.popleft() if self._unstarted else None
        if req is None:  # closing and nothing left
            self._send_header(ChunkHeader(kind=KIND_BYE))
            return
        h = req.plan.header(req.request_id, 0, 0, ctrl.capacity, ctrl.inline_bytes)
        req.described = 0
        if h.last and h.int_bytes + h.embed_bytes <= ctrl.inline_bytes:
            h.flags = (h.flags | FLAG_INLINE) & ~FLAG_INTS
            if self.on_chunk is not None:
                self.on_chunk(req.request_id, 0, h.token_count)
            msg = req.plan.inline_message(h)
            self._inline_sends.append((self._link.isend(msg, self.header_tag), msg))
            self._count_data(req, h, msg.numel() - HEADER_BYTES, 1)
            self.stats.inline_requests += 1
            self._count_header(req.request_id)
            return
        if ctrl.flags & PULL_PUSH:  # the whole request now, chunk after chunk
            self._push(req, h, ctrl)
        else:
            self._send_chunk_header(req, h)

    def _answer_pull(self, ctrl: Control) -> bool:
        """Data of the chunk at `offset` (the receiver has its header), then the next chunk's header."""
        with self._cond:
            req = self._requests.get(ctrl.request_id)
        if req is None:
            self._send_error(ctrl.request_id, ctrl.offset, ERR_UNKNOWN_REQUEST)
            return False
        cap, o = ctrl.capacity, ctrl.offset
        if not (req.acked <= o <= req.described) or o >= req.plan.total or o % cap:
            self._send_error(ctrl.request_id, o, ERR_BAD_OFFSET)
            return False
        req.acked = req.handle.acked_offset = o
        h = req.plan.header(req.request_id, o // cap, o, cap, ctrl.inline_bytes)
        self._send_data(req, h)
        if ctrl.flags & PULL_DATA_ONLY:
            return False
        if not h.last:
            nxt = o + h.token_count
            req.described = nxt
            self._send_chunk_header(req, req.plan.header(req.request_id, nxt // cap, nxt, cap, ctrl.inline_bytes))
        elif ctrl.flags & PULL_DESCRIBE_NEXT:
            self._answer_next(ctrl)
        return False

    def _send_data(self, req: _Request, h: ChunkHeader) -> None:
        if self.on_chunk is not None:
            self.on_chunk(req.request_id, h.token_offset, h.token_count)
        if req.ready is not None:  # NCCL orders its stream after this thread's current stream
            torch.cuda.current_stream(req.plan.rows.device).wait_event(req.ready)
        msgs = req.plan.messages(h)
        works = self._isend_many(msgs, self.data_tag)
        self._count_data(req, h, sum(m.numel() * m.element_size() for m in msgs), len(works))

    def _push(self, req: _Request, h: ChunkHeader, ctrl: Control) -> None:
        """Post every message of the request whose first header is `h`, in order: each chunk's
        header, then its data, unless that is over `PUSH_LIMIT` (then flagged `FLAG_PULLED` and sent
        when pulled, as is every later chunk's). One batch for the completion thread. gloo sends a
        message only once the receiver posted its receive, which the receiver does a chunk at a
        time (after the previous one is acknowledged), so its memory bound holds and neither a pull
        round trip nor any work of ours sits between two pushed chunks."""
        cap = ctrl.capacity
        pulled = False  # after one pulled chunk all are: data must be posted in the order received
        self._batch = []
        try:
            while True:
                pulled = pulled or sum(data_sizes(h)) > PUSH_LIMIT
                if pulled:
                    h.flags |= FLAG_PULLED
                self._send_chunk_header(req, h)
                if not h.pulled:
                    self._send_data(req, h)
                if h.last:
                    break
                o = h.token_offset + h.token_count
                h = req.plan.header(req.request_id, o // cap, o, cap, ctrl.inline_bytes)
                req.described = o
        finally:
            batch, self._batch = self._batch, None
            self._sends.extend(self._send_waiter.submit_many(batch))

    def _reject(self, req: _Request, field_index: int) -> None:
        names = [f for f in ChunkHeader.__dataclass_fields__]
        field = names[field_index] if 0 <= field_index < len(names) else "header"
        with self._cond:
            self._requests.pop(req.request_id, None)
            self._cond.notify_all()
        req.handle._finish(HeaderMismatch(
            f"{req_name(req.request_id)}: rejected by receiver rank {self.peer}: field '{field}' does not match "
            f"its expectations", req.request_id, field))

    def _finish(self, request_id: int, total: int) -> None:
        with self._cond:
            req = self._requests.pop(request_id, None)
            self._cond.notify_all()
        if req is None:
            return
        if total != req.plan.total:
            req.handle._finish(TransferError(
                f"{req_name(request_id)}: receiver acknowledged {total} tokens, request has {req.plan.total}",
                request_id, "total_tokens"))
            return
        req.acked = req.handle.acked_offset = total
        self.stats.requests_done += 1
        req.handle._finish()

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            self._dead = error
            reqs = list(self._requests.values())
            self._requests.clear()
            self._unstarted.clear()
            self._cond.notify_all()
        for r in reqs:
            r.handle._finish(error)

    # ------------------------------------------------------------------ wire
    def _count_data(self, req: _Request, h: ChunkHeader, nbytes: int, messages: int) -> None:
        s = self.stats
        self._count_payload(req.request_id, nbytes)
        if h.token_offset in req.sent:
            s.payload_bytes_resent += nbytes
        s.chunks_sent += 1
        s.messages_sent += messages
        req.sent.add(h.token_offset)

    def _count_payload(self, request_id: int, nbytes: int) -> None:
        s = self.stats
        s.payload_bytes_sent += nbytes
        s.bytes_sent += nbytes
        s.per_request_bytes[request_id] = s.per_request_bytes.get(request_id, 0) + nbytes

    def _count_header(self, request_id: int = NONE_ID) -> None:
        s = self.stats
        s.header_bytes_sent += HEADER_BYTES
        s.bytes_sent += HEADER_BYTES
        if request_id != NONE_ID:
            s.per_request_bytes[request_id] = s.per_request_bytes.get(request_id, 0) + HEADER_BYTES

    def _send_header(self, h: ChunkHeader, message: torch.Tensor | None = None) -> None:
        self._isend_many([h.to_tensor() if message is None else message], self.header_tag)
        self.stats.messages_sent += 1
        self._count_header(h.request_id if h.kind != KIND_ERROR else NONE_ID)

    def _send_chunk_header(self, req: _Request, h: ChunkHeader) -> None:
        """A chunk's header, with its int section when `FLAG_INTS` (counted as that chunk's data)."""
        self._send_header(h, req.plan.header_message(h))
        if h.ints_inline:
            self._count_payload(req.request_id, h.int_bytes)

    def _send_error(self, request_id: int, offset: int, code: int) -> None:
        self._send_header(ChunkHeader(kind=KIND_ERROR, request_id=request_id, token_offset=offset, error_code=code))

    def _isend_many(self, tensors: list[torch.Tensor], tag: int) -> list:
        """Post sends, in order; their completion is tracked by the send-waiter thread (which keeps
        the tensors alive), handed over in one batch (one thread wake-up), or added to the batch
        being collected (`_push`). Headers go as host tensors (the group's CPU backend), data on
        the data's device."""
        device = self.device if tag == self.data_tag else _CPU
        if device is not None:
            tensors = [t if t.device == device else t.to(device) for t in tensors]
        items = [(self._link.isend(t, tag), t, 0) for t in tensors]
        if self._batch is not None:
            self._batch.extend(items)
            return items
        ps = self._send_waiter.submit_many(items)
        self._sends.extend(ps)
        return ps


_CPU = torch.device("cpu")


def _ready_event(t: torch.Tensor) -> torch.cuda.Event | None:
    """CUDA: an event on the caller's current stream, after the work that wrote the request (and
    `SendPlan.build`'s interleave); the sending thread's stream waits for it (NCCL then waits
    for that stream), whichever stream the encoder ran on."""
    if not t.is_cuda:
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(t.device))
    return event


def _as_transfer_error(e: BaseException, peer: int) -> TransferError:
    return e if isinstance(e, TransferError) else TransferError(f"channel to rank {peer} failed: {e}")


__all__ = ["EncoderOutputSender", "SendHandle", "SenderStats", "ERROR_NAMES"]
