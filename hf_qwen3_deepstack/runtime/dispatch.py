"""Work-conserving dispatch, run by the language leader between its decode steps.

A request goes to the encoder with the fewest requests in hand (below `encoder_slots`), and to
the language replica with the most free capacity: the fewest new tokens still to generate for the
requests dispatched to it and not finished (at most `lm_slots` requests), then the fewest such
requests; ties go to the rank that has handled the fewest so far. The leader tells the replica the
request's parameters (`expect`) and the encoder what to encode and where to send it (`assign`).
Encoders report `encoded` (their slot frees) or `failed` (the request gets an error result and the
replica is told to `drop` it); replicas report each `result`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .requests import Request


@dataclass
class DispatchLimits:
    encoder_slots: int  # requests an encoder may hold (queued, being encoded)
    lm_slots: int  # requests a language replica may hold (arriving, waiting, running)
    serial: bool = False  # one request in the whole system at a time (latency measurements)
    serial_gap_s: float = 0.0  # with serial: idle time before each request


@dataclass
class Record:
    request: Request
    arrival: float  # wall clock (time.time()), comparable across ranks of one node
    encoder: int = -1
    lm: int = -1
    encoding: bool = False  # assigned to `encoder`, not yet reported encoded or failed
    result: dict[str, Any] | None = None  # a result that came before the encoder's report
    encode_s: float = 0.0
    sent_at: float = 0.0


@dataclass
class RankLoad:
    requests: int = 0
    new_tokens: int = 0
    handled: int = 0


class Dispatcher:
    def __init__(self, encoders: list[int], lms: list[int], limits: DispatchLimits,
                 send: Callable[[dict[str, Any], int], None], finish: Callable[[Request, dict[str, Any]], None]):
        self.limits = limits
        self.send = send  # (message, destination rank); the leader's own replica is a destination too
        self.finish = finish  # (request, its one result line)
        self.encoders = {e: RankLoad() for e in encoders}
        self.lms = {lm: RankLoad() for lm in lms}
        self.pending: deque[Record] = deque()
        self.records: dict[int, Record] = {}
        self._last_dispatch = 0.0

    @property
    def in_flight(self) -> int:
        return len(self.records)

    @property
    def queue_depth(self) -> int:
        return len(self.pending)

    def submit(self, request: Request, arrival: float | None = None) -> None:
        self.pending.append(Record(request, time.time() if arrival is None else arrival))

    def next_dispatch_in(self) -> float:
        """Seconds until a queued request may go with no other event: the rest of a serial gap, or inf."""
        if not (self.limits.serial and self.pending and not self.records):
            return math.inf
        return max(0.0, self._last_dispatch + self.limits.serial_gap_s - time.perf_counter())

    def dispatch(self) -> None:
        while self.pending:
            if self.limits.serial:
                if self.records:
                    return
                if time.perf_counter() - self._last_dispatch < self.limits.serial_gap_s:
                    return
            enc = min(self.encoders, key=lambda e: (self.encoders[e].requests, self.encoders[e].handled, e))
            lm = min(self.lms, key=lambda r: (self.lms[r].new_tokens, self.lms[r].requests, self.lms[r].handled, r))
            if (self.encoders[enc].requests >= self.limits.encoder_slots
                    or self.lms[lm].requests >= self.limits.lm_slots):
                return
            rec = self.pending.popleft()
            if self.limits.serial:  # the request meets an idle system: its clock starts now
                rec.arrival = time.time()
            rec.encoder, rec.lm, rec.encoding = enc, lm, True
            self.records[rec.request.index] = rec
            new_tokens = rec.request.params.max_new_tokens
            self.encoders[enc].requests += 1
            self.lms[lm].requests += 1
            self.lms[lm].new_tokens += new_tokens
            req = rec.request
            self.send({"kind": "expect", "index": req.index, "id": req.id, "params": req.params.to_json(),
                       "stream": req.stream}, lm)
            self.send({"kind": "assign", "index": req.index, "lm": lm, "id": req.id, "messages": req.messages,
                       "max_new_tokens": new_tokens}, enc)
            self._last_dispatch = time.perf_counter()

    def on_encoded(self, encoder: int, items: list[dict[str, Any]]) -> None:
        for item in items:
            rec = self.records.get(int(item["index"]))
            if rec is None or rec.encoder != encoder or not rec.encoding:
                raise RuntimeError(f"rank {encoder} reported encoding request {item['index']}, not assigned to it")
            rec.encode_s, rec.sent_at = float(item["encode_s"]), float(item["sent_at"])
            self._release_encoder(rec)
            if rec.result is not None:  # the replica was quicker than this report
                self._complete(rec)

    def cancel(self, index: int) -> None:
        """The client is gone: a queued request is dropped, a dispatched one cancelled on its replica
        (which answers with a result, so its slot is freed as usual)."""
        for rec in self.pending:
            if rec.request.index == index:
                self.pending.remove(rec)
                self.finish(rec.request, {"id": rec.request.id, "error": "cancelled by the client", "cancelled": True})
                return
        rec = self.records.get(index)
        if rec is not None and rec.result is None:
            self.send({"kind": "cancel", "index": index}, rec.lm)

    def on_failed(self, encoder: int, index: int, error: str, status: int = 400) -> None:
        rec = self.records.get(index)
        if rec is None or rec.encoder != encoder or not rec.encoding:
            raise RuntimeError(f"rank {encoder} reported a failure of request {index}, not assigned to it")
        self._release_encoder(rec)
        self.send({"kind": "drop", "index": index}, rec.lm)
        self._release_lm(rec)
        del self.records[index]
        self.finish(rec.request, {"id": rec.request.id, "error": error, "status": status})

    def on_result(self, lm: int, result: dict[str, Any]) -> None:
        index = int(result.pop("index"))
        rec = self.records.get(index)
        if rec is None or rec.lm != lm or rec.result is not None:
            raise RuntimeError(f"rank {lm} sent a result for request {index}, not dispatched to it")
        self._release_lm(rec)
        rec.result = result
        if not rec.encoding:
            self._complete(rec)

    def _complete(self, rec: Record) -> None:
        del self.records[rec.request.index]
        result = rec.result
        if "error" not in result:
            timings = result["timings"]
            timings["encode_s"] = round(rec.encode_s, 6)
            timings["transfer_s"] = round(max(0.0, result.pop("received_at") - rec.sent_at), 6)
            admitted, first, done = result.pop("admitted_at"), result.pop("first_token_at"), result.pop("done_at")
            result["queue_s"] = round(max(0.0, admitted - rec.arrival - rec.encode_s - timings["transfer_s"]), 6)
            result["ttft_s"] = round(first - rec.arrival, 6)
            result["latency_s"] = round(done - rec.arrival, 6)
            result["encoder_rank"] = rec.encoder
        self.finish(rec.request, {"id": rec.request.id, **result})

    def _release_encoder(self, rec: Record) -> None:
        rec.encoding = False
        self.encoders[rec.encoder].requests -= 1
        self.encoders[rec.encoder].handled += 1

    def _release_lm(self, rec: Record) -> None:
        load = self.lms[rec.lm]
        load.requests -= 1
        load.new_tokens -= rec.request.params.max_new_tokens
        load.handled += 1
