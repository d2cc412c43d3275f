"""Encoder side: `EncoderOutputSender` keeps requests until the receiver acknowledged them and
answers its control messages (see `protocol.py`)."""

from __future__ import annotations

import collections
import operator
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..encoder_output import EncoderOutput
from ._wait import Waiter, block_on, remaining
from .chunking import SendPlan
from .link import PeerLink, claim, release
from .protocol import (
    CONTROL_WORDS, ERR_BAD_CONTROL, ERR_BAD_OFFSET, ERR_UNKNOWN_REQUEST, HEADER_BYTES, HEADER_FIELDS, KIND_ACK,
    KIND_BYE, KIND_CLOSE, KIND_ERROR, KIND_PULL, KIND_REJECT, MAX_ID, NEXT, ChunkHeader, Control, HeaderMismatch,
    PeerClosed, TransferError, TransferTimeout, header_message, req_name)

DEFAULT_TAG = 100  # tags: +1 control (receiver -> sender), +2 rows, +3 headers (sender -> receiver)
_HEADER_NBYTES = HEADER_BYTES + 8  # header words and trailer of a header message


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
        """Block until acknowledged; raise `TransferTimeout` after `timeout` s (the request stays
        retained: waiting again is fine) or the transfer's error."""
        timeout = self._timeout if timeout is None else timeout
        if not self._event.wait(timeout):
            raise TransferTimeout(f"{req_name(self.request_id)}: not acknowledged within {timeout:g} s "
                                  f"(acknowledged token offset {self.acked_offset} of {self.total_tokens})",
                                  self.request_id, self.acked_offset)
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
    ready: torch.cuda.Event | None = None  # CUDA: the caller's stream wrote the request
    capacity: int = 0  # chunk size, from the PULL(NEXT) that described it
    header_bytes: int = 0  # the largest header message the receiver accepts
    described: ChunkHeader | None = None  # the chunk whose header was sent last


@dataclass
class SenderStats:
    bytes_sent: int = 0  # headers + ints + rows
    payload_bytes_sent: int = 0  # int sections + rows
    chunks_sent: int = 0
    messages_sent: int = 0
    requests_done: int = 0
    per_request_bytes: dict[int, int] = field(default_factory=dict)


class EncoderOutputSender:
    """Send `EncoderOutput`s to the receiver on global rank `peer` over `group` (default WORLD).

    `isend` returns a `SendHandle` at once (it blocks only while `max_in_flight` requests are
    unacknowledged); `send` waits for the acknowledgement. A control thread answers the receiver;
    a completion thread waits for the sends. `on_chunk(request_id, token_offset, token_count)` is
    called before a chunk's rows are posted."""

    def __init__(self, peer: int, group: dist.ProcessGroup | None = None, *, timeout: float = 60.0,
                 max_in_flight: int = 8, tag: int = DEFAULT_TAG, device: torch.device | str | None = None,
                 on_chunk: Callable[[int, int, int], None] | None = None):
        self.peer = peer
        self.group = group
        self._link = PeerLink(peer, group)
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.ctrl_tag, self.data_tag, self.header_tag = tag + 1, tag + 2, tag + 3
        self.device = torch.device(device) if device is not None else None
        self.on_chunk = on_chunk
        self.stats = SenderStats()
        self._claim = claim("sender", [self._link], tag)
        self._cond = threading.Condition(threading.RLock())  # guards the state and the order of sends
        self._requests: dict[int, _Request] = {}  # not yet acknowledged
        self._unsent: collections.deque[_Request] = collections.deque()
        self._current: _Request | None = None  # described, not every chunk pulled yet
        self._pending: Control | None = None  # a PULL waiting for the next request (or BYE)
        self._closing = False
        self._dead: BaseException | None = None
        self._waiter = Waiter(f"tx-send-{peer}", on_error=lambda e: self._fail_all(_as_error(e, peer)))
        self._reader = threading.Thread(target=self._read_loop, name=f"tx-ctrl-{peer}", daemon=True)
        self._reader.start()

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._requests)

    # ------------------------------------------------------------------ public API
    def isend(self, request_id: int, output: EncoderOutput, timeout: float | None = None) -> SendHandle:
        """Queue `output` as request `request_id` (an int in 0..2**62-1, unique among those in flight)."""
        try:
            request_id = operator.index(request_id)
        except TypeError:
            request_id = -1
        if not 0 <= request_id <= MAX_ID:
            raise TransferError(f"request id {request_id!r} is not an int in 0..{MAX_ID}", None, "request_id")
        plan = SendPlan.build(output)
        if self.device is None:
            self.device = output.input_ids.device
        plan.cuda = self.device.type == "cuda"
        ready = None
        if plan.cuda:  # the sending thread's stream waits for what the caller's stream wrote
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(plan.rows.device))
        handle = SendHandle(request_id, plan.total, self.timeout)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while len(self._requests) >= self.max_in_flight and self._dead is None:
                if not self._cond.wait(remaining(deadline)) and time.monotonic() >= deadline:
                    raise TransferTimeout(f"{req_name(request_id)}: {len(self._requests)} requests still in flight "
                                          f"(max_in_flight={self.max_in_flight})", request_id, 0)
            if self._dead is not None:
                raise TransferError(f"{req_name(request_id)}: channel to rank {self.peer} is down: {self._dead}",
                                    request_id) from self._dead
            if self._closing:
                raise PeerClosed(f"{req_name(request_id)}: sender is closed", request_id)
            if request_id in self._requests:
                raise TransferError(f"{req_name(request_id)} is already in flight", request_id, "request_id")
            req = self._requests[request_id] = _Request(request_id, plan, handle, ready)
            self._unsent.append(req)
            if self._pending is not None:  # the receiver is waiting for it: describe it from here
                self._guard(self._answer_next, self._pending)
        return handle

    def send(self, request_id: int, output: EncoderOutput, timeout: float | None = None) -> None:
        """Blocking: return once the receiver acknowledged the whole request."""
        self.isend(request_id, output, timeout).wait(timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued request is acknowledged."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            handles = [r.handle for r in self._requests.values()]
        for h in handles:
            h.wait(remaining(deadline))

    def close(self, timeout: float | None = None) -> None:
        """Wait for the requests in flight, tell a waiting receiver BYE (its `recv()` raises
        `PeerClosed`), wait for its `close()` and for our last sends: the process group may be
        destroyed right after."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            if self._dead is None:
                self.flush(remaining(deadline))
        finally:
            with self._cond:
                self._closing = True
                if self._pending is not None and self._dead is None:
                    self._guard(self._answer_next, self._pending)
            self._reader.join(remaining(deadline))  # ends with the receiver's CLOSE
            self._waiter.stop(remaining(deadline))
            release(self._claim)

    def __enter__(self) -> "EncoderOutputSender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ control thread
    def _read_loop(self) -> None:
        def post() -> tuple:
            buf = torch.empty(CONTROL_WORDS, dtype=torch.int64)
            return self._link.irecv(buf, self.ctrl_tag), buf

        try:
            work, buf = post()
            while True:
                block_on(work, False)
                ctrl = Control.parse(buf.tolist())
                if ctrl.kind != KIND_CLOSE:  # posted before answering: the next one never waits for it
                    work, buf = post()
                with self._cond:
                    if self._handle(ctrl):
                        return
        except BaseException as e:  # noqa: BLE001 - fails every pending handle
            self._fail_all(_as_error(e, self.peer))

    def _handle(self, ctrl: Control) -> bool:
        """Answer one control message; True when the receiver closed."""
        if ctrl.kind == KIND_CLOSE:
            self._closing = True
            if self._pending is not None:
                self._answer_next(self._pending)
            self._fail_all(PeerClosed(f"receiver rank {self.peer} closed"))
            return True
        if ctrl.kind == KIND_ACK:
            self._finish(ctrl)
        elif ctrl.kind == KIND_REJECT:
            names = HEADER_FIELDS
            field_ = names[ctrl.reason] if 0 <= ctrl.reason < len(names) else "header"
            self._drop(ctrl.request_id, HeaderMismatch(
                f"{req_name(ctrl.request_id)}: rejected by receiver rank {self.peer}: header field '{field_}' "
                f"is out of its range or expectations (the receiver's error says which)", ctrl.request_id, field_))
        elif ctrl.kind != KIND_PULL or ctrl.capacity <= 0:
            self._send_error(ctrl, ERR_BAD_CONTROL)
        elif ctrl.request_id == NEXT:
            if self._current is not None:  # the receiver dropped it (after a header it could not read)
                cur = self._current
                self._drop(cur.request_id, TransferError(
                    f"{req_name(cur.request_id)}: receiver rank {self.peer} dropped it at token offset "
                    f"{cur.handle.acked_offset}", cur.request_id, "header"))
            self._answer_next(ctrl)
        else:
            self._answer_pull(ctrl)
        return False

    def _answer_next(self, ctrl: Control) -> None:
        """Describe the next request (its chunk 0), or BYE once closed, or wait for an `isend`."""
        self._pending = None
        if self._closing:
            self._post([header_message(ChunkHeader(kind=KIND_BYE))], self.header_tag)
            self._count_header()
        elif self._unsent:
            req = self._current = self._unsent.popleft()
            req.capacity, req.header_bytes = ctrl.capacity, ctrl.header_bytes
            if req.ready is not None:  # CUDA: the header messages carry its ints, read on the host
                req.ready.synchronize()
                req.plan.ints_to_host()
            self._send_header(req, 0)
        else:
            self._pending = ctrl

    def _answer_pull(self, ctrl: Control) -> None:
        """The rows of the chunk at `offset`, then the next header."""
        req, o = self._current, ctrl.offset
        if req is None or req.request_id != ctrl.request_id:
            return self._send_error(ctrl, ERR_UNKNOWN_REQUEST)
        h = req.described
        if o != h.token_offset or ctrl.capacity != req.capacity:
            return self._send_error(ctrl, ERR_BAD_OFFSET)
        req.handle.acked_offset = o
        if self.on_chunk is not None:
            self.on_chunk(req.request_id, o, h.token_count)
        rows = req.plan.rows_message(h)
        if rows is not None:
            if req.ready is not None:  # NCCL orders its stream after this thread's current stream
                torch.cuda.current_stream(rows.device).wait_event(req.ready)
            self._post([rows], self.data_tag)
            self._count(req.request_id, h.embed_bytes, payload=True)
        self.stats.chunks_sent += 1
        if not h.last:
            self._send_header(req, o + h.token_count)
        else:
            self._current = None
            self._answer_next(ctrl)

    def _send_header(self, req: _Request, offset: int) -> None:
        h = req.plan.header(req.request_id, offset, req.capacity)
        msg = req.plan.header_message(h, req.header_bytes)
        req.described = h
        self._post([msg], self.header_tag)
        self._count_header(req.request_id)
        self._count(req.request_id, msg.numel() - _HEADER_NBYTES, payload=True)

    def _send_error(self, ctrl: Control, code: int) -> None:
        err = ChunkHeader(kind=KIND_ERROR, request_id=ctrl.request_id, token_offset=ctrl.offset, error_code=code)
        self._post([header_message(err)], self.header_tag)
        self._count_header()

    def _finish(self, ctrl: Control) -> None:
        req = self._requests.get(ctrl.request_id)
        if req is None or req is self._current:
            return
        if ctrl.total != req.plan.total:
            return self._drop(req.request_id, TransferError(
                f"{req_name(req.request_id)}: receiver acknowledged {ctrl.total} tokens, request has {req.plan.total}",
                req.request_id, "total_tokens"))
        del self._requests[req.request_id]
        req.handle.acked_offset = req.plan.total
        self.stats.requests_done += 1
        req.handle._finish()
        self._cond.notify_all()

    def _drop(self, request_id: int, error: BaseException) -> None:
        req = self._requests.pop(request_id, None)
        if req is None:
            return
        if req is self._current:
            self._current = None
        if req in self._unsent:
            self._unsent.remove(req)
        req.handle._finish(error)
        self._cond.notify_all()

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            self._dead = self._dead or error
            reqs = list(self._requests.values())
            self._requests.clear()
            self._unsent.clear()
            self._current = self._pending = None
            self._cond.notify_all()
        for r in reqs:
            r.handle._finish(error)

    def _guard(self, fn: Callable, *args) -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - a send that cannot be posted: the channel is down
            self._fail_all(_as_error(e, self.peer))

    # ------------------------------------------------------------------ wire
    def _post(self, tensors: list[torch.Tensor], tag: int) -> None:
        """Post sends in order; the completion thread waits for them (and keeps them alive)."""
        self._waiter.submit([(self._link.isend(t, tag), t) for t in tensors])
        self.stats.messages_sent += len(tensors)

    def _count_header(self, request_id: int | None = None) -> None:
        self._count(request_id, _HEADER_NBYTES, payload=False)

    def _count(self, request_id: int | None, nbytes: int, payload: bool) -> None:
        s = self.stats
        s.bytes_sent += nbytes
        if payload:
            s.payload_bytes_sent += nbytes
        if request_id is not None:
            s.per_request_bytes[request_id] = s.per_request_bytes.get(request_id, 0) + nbytes


def _as_error(e: BaseException, peer: int) -> TransferError:
    return e if isinstance(e, TransferError) else TransferError(f"channel to rank {peer} failed: {e}")


__all__ = ["EncoderOutputSender", "SendHandle", "SenderStats"]
