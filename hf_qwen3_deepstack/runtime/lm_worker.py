"""Language rank: an independent replica holding only the language half, decoding a continuous
batch. Between two decode steps it takes what arrived (parameters from the leader, payloads from
the encoders), admits what fits with one prefill, decodes one token for every running sequence,
and reports each finished request at once.

The language leader also dispatches the requests (`dispatch.Dispatcher`) and writes the result
lines, the progress bar and the summary.
"""

from __future__ import annotations

import queue
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from hf_qwen3_deepstack.cli_values import LOG_PREFIX

from . import faults, messages
from .batching import ContinuousBatch, Sequence
from .channel import Arrival, Inbox
from .dispatch import DispatchLimits, Dispatcher
from .models import load_lm
from .results import ResultWriter, format_summary, write_summary_json
from .sampling import SamplingParams

IDLE_WAIT_S = 0.5  # an idle replica wakes this often


@dataclass
class Expected:
    id: str
    params: SamplingParams
    stream: bool = False


class LanguageReplica:
    def __init__(self, ctx, events: queue.Queue):
        self.ctx = ctx
        self.rank = ctx.roles.rank
        self.events = events
        tokenizer, lm = load_lm(ctx.model, ctx.dtype, ctx.device)
        opts = ctx.options
        self.batch = ContinuousBatch(lm, tokenizer, max_batch_size=opts.max_batch_size,
                                     max_batch_tokens=opts.max_batch_tokens)
        self.inbox = Inbox(ctx.roles.encoder_ranks, lambda e: ctx.groups.data_for(e, self.rank),
                           capacity_tokens=opts.capacity_tokens, device=ctx.device, timeout_s=opts.timeout,
                           events=events)
        self.expected: dict[int, Expected] = {}
        self.landed: dict[int, Arrival] = {}
        self.waiting: deque[Sequence] = deque()  # payload here, not yet admitted (`origin`: its Arrival)
        self.streamed: dict[int, int] = {}  # streamed request -> tokens reported so far
        self.cancelled: set[int] = set()  # cancelled before their payload landed
        self.handled = 0
        self.stop_requested = False

    # --- inputs ------------------------------------------------------------------------------------
    def take_events(self, block: bool, wait_s: float = IDLE_WAIT_S) -> None:
        """Handle every queued event; with `block`, first wait (at most `wait_s`) for one."""
        try:
            event = self.events.get(timeout=wait_s) if block else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            kind = event[0]
            if kind == "error":
                self.ctx.die(event[1])
            elif kind == "data":
                self._landed(event[1])
            elif kind == "msg":
                self.on_message(event[1], event[2])
            else:
                self.on_local(event)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return

    def on_message(self, src: int, msg: dict[str, Any]) -> None:
        kind = msg["kind"]
        if kind == "expect":
            index = int(msg["index"])
            self.expected[index] = Expected(str(msg["id"]), SamplingParams.from_json(msg["params"]),
                                            bool(msg.get("stream")))
            self._match(index)
        elif kind == "drop":
            self.expected.pop(int(msg["index"]), None)
        elif kind == "cancel":
            self.cancel(int(msg["index"]))
        elif kind == "stop":
            self.stop_requested = True
        else:
            self.ctx.die(f"unexpected {kind!r} message from rank {src}")

    def on_local(self, event: tuple) -> None:
        self.ctx.die(f"unexpected event {event[0]!r}")

    def cancel(self, index: int) -> None:
        """Free a request's slot: out of the batch at once, or dropped when its payload lands."""
        for i, seq in enumerate(self.waiting):
            if seq.index == index:
                del self.waiting[i]
                self.report(self.cancelled_result(index))
                return
        if self.batch.cancel(index):
            return  # reported when the batch retires it
        self.cancelled.add(index)

    def _landed(self, arrival: Arrival) -> None:
        self.landed[arrival.index] = arrival
        self._match(arrival.index)

    def _match(self, index: int) -> None:
        if index in self.expected and index in self.landed:
            exp, arrival = self.expected.pop(index), self.landed.pop(index)
            if index in self.cancelled:
                self.cancelled.discard(index)
                self.report(self.cancelled_result(index))
                return
            if exp.stream:
                self.streamed[index] = 0
            try:
                arrival.output.validate()
                seq = self.batch.new_sequence(index, exp.params, arrival.output, origin=arrival)
            except Exception as e:
                self.report(self.error_result(index, f"invalid payload: {type(e).__name__}: {e}"))
                return
            self.waiting.append(seq)

    # --- one scheduling round ----------------------------------------------------------------------
    def round(self) -> None:
        faults.maybe_delay(self.rank)
        finished: list[Sequence] = []
        joining: list[Sequence] = []
        while self.waiting and self.batch.fits(joining, self.waiting[0]):
            joining.append(self.waiting.popleft())
        if joining:
            finished += self._admit(joining)
        if len(self.batch):
            try:
                finished += self.batch.step()
            except Exception as e:  # e.g. out of memory: every running sequence fails, the replica goes on
                self.ctx.log(f"decode step failed: {type(e).__name__}: {e}")
                for seq in self.batch.abort_all():
                    self.report(self.error_result(seq.index, f"generation failed: {type(e).__name__}: {e}"))
        for index, sent in self.streamed.items():
            seq = self.batch.running(index)
            if seq is not None and len(seq.tokens) > sent:
                self.report_tokens(index, seq.tokens[sent:])
                self.streamed[index] = len(seq.tokens)
        for seq in finished:
            self.report(self.cancelled_result(seq.index) if seq.finish_reason == "cancelled" else self.ok_result(seq))

    def _admit(self, joining: list[Sequence]) -> list[Sequence]:
        try:
            return self.batch.admit([(s, s.origin.output) for s in joining])
        except Exception as e:
            if len(joining) == 1:
                seq = joining[0]
                self.ctx.log(f"request {seq.index}: prefill failed: {type(e).__name__}: {e}")
                self.report(self.error_result(seq.index, f"generation failed: {type(e).__name__}: {e}"))
                return []
        done = []  # a batched prefill failed: each alone, so only the culprit fails
        for item in joining:
            done += self._admit([item])
        return done

    # --- results -----------------------------------------------------------------------------------
    def ok_result(self, seq: Sequence) -> dict[str, Any]:
        arrival: Arrival = seq.origin
        now = time.time()
        return {
            "index": seq.index,
            "text": self.batch.text(seq),
            "token_ids": list(seq.tokens),
            "finish_reason": seq.finish_reason,
            "prompt_tokens": seq.prompt_len,
            "visual_tokens": arrival.output.num_visual_tokens,
            "timings": {"prefill_s": round(seq.prefill_s, 6), "decode_s": round(now - seq.first_token_at, 6)},
            "lm_rank": self.rank,
            "running": len(self.batch),
            "received_at": arrival.received_at,
            "admitted_at": seq.admitted_at,
            "first_token_at": seq.first_token_at,
            "done_at": now,
        }

    @staticmethod
    def error_result(index: int, error: str) -> dict[str, Any]:
        return {"index": index, "error": error, "status": 500}

    @staticmethod
    def cancelled_result(index: int) -> dict[str, Any]:
        return {"index": index, "error": "cancelled by the client", "cancelled": True}

    def report(self, result: dict[str, Any]) -> None:
        self.handled += 1
        faults.maybe_die(self.rank, self.handled)
        self.streamed.pop(result["index"], None)
        self.deliver(result)

    def deliver(self, result: dict[str, Any]) -> None:
        """Hand a finished request's result to the leader."""
        messages.send({"kind": "result", "result": result}, self.ctx.roles.lm_leader, self.ctx.groups.ctrl)

    def report_tokens(self, index: int, token_ids: list[int]) -> None:
        messages.send({"kind": "tokens", "index": index, "token_ids": token_ids}, self.ctx.roles.lm_leader,
                      self.ctx.groups.ctrl)

    @property
    def idle(self) -> bool:
        return not len(self.batch) and not self.waiting

    def stats(self) -> dict[str, Any]:
        return {"lm_rank": self.rank, "handled": self.handled, **self.batch.stats.to_json()}


class LeaderReplica(LanguageReplica):
    """The language leader: a replica that also dispatches the requests and hands every result (and,
    for streamed requests, every token) to its sink: the result file or the HTTP server."""

    def __init__(self, ctx, events: queue.Queue, sink):
        super().__init__(ctx, events)
        opts, roles = ctx.options, ctx.roles
        limits = DispatchLimits(encoder_slots=opts.encoder_slots, lm_slots=2 * opts.max_batch_size,
                                serial=opts.serial, serial_gap_s=opts.serial_gap_ms / 1e3)
        self.sink = sink
        self.dispatcher = Dispatcher(roles.encoder_ranks, roles.lm_ranks, limits, self.send, sink.finish)
        self.rank_stats: dict[int, dict[str, Any]] = {}

    def send(self, msg: dict[str, Any], dst: int) -> None:
        if dst == self.rank:
            self.on_message(dst, msg)
        else:
            messages.send(msg, dst, self.ctx.groups.ctrl)

    def deliver(self, result: dict[str, Any]) -> None:
        self.dispatcher.on_result(self.rank, result)

    def report_tokens(self, index: int, token_ids: list[int]) -> None:
        self.sink.tokens(index, token_ids)

    def on_message(self, src: int, msg: dict[str, Any]) -> None:
        kind = msg["kind"]
        if kind == "result":
            self.dispatcher.on_result(src, msg["result"])
        elif kind == "tokens":
            self.sink.tokens(int(msg["index"]), [int(t) for t in msg["token_ids"]])
        elif kind == "encoded":
            self.sink.encoded(msg)
            self.dispatcher.on_encoded(src, msg["items"])
        elif kind == "failed":
            self.dispatcher.on_failed(src, int(msg["index"]), str(msg["error"]), int(msg.get("status", 400)))
        elif kind == "stopped":
            self.rank_stats[src] = msg.get("stats", {})
        else:
            super().on_message(src, msg)

    def on_local(self, event: tuple) -> None:
        if event[0] == "submit":
            self.dispatcher.submit(event[1])
        elif event[0] == "cancel":
            self.dispatcher.cancel(event[1])
        elif event[0] == "drain":
            self.sink.draining = True
        else:
            super().on_local(event)

    def serve_until(self, finished) -> None:
        """Schedule until `finished()`, then stop every other rank and collect their statistics."""
        roles = self.ctx.roles
        while True:
            self.dispatcher.dispatch()
            self.round()
            self.dispatcher.dispatch()  # into the slots this round's results freed
            self.sink.beat(self)
            if finished():
                break
            # Queued requests wait for an event (a free slot), or for the end of a --serial-gap-ms.
            self.take_events(block=self.idle, wait_s=min(IDLE_WAIT_S, self.dispatcher.next_dispatch_in()))
        for rank in range(roles.world_size):
            if rank != roles.rank:
                messages.send({"kind": "stop"}, rank, self.ctx.groups.ctrl)
        self.inbox.close()  # while the encoders close their senders
        while len(self.rank_stats) < roles.world_size - 1:
            self.take_events(block=True)
        self.rank_stats[roles.rank] = self.stats()


class FileSink:
    """`run`: result lines to the output file (or stdout), the progress bar and the summary."""

    draining = False

    def __init__(self, opts, requests: list):
        self.requests = requests
        self.writer = ResultWriter(
            opts.output, total=len(requests), progress=not opts.no_progress,
            stream=sys.stdout if opts.print_results else None,
            json_stream=sys.stdout if opts.output is None and not opts.print_results else None,
        )

    def finish(self, request, line: dict[str, Any]) -> None:
        line.pop("status", None)
        line.pop("running", None)
        self.writer.write(line)

    def tokens(self, index: int, token_ids: list[int]) -> None:
        pass

    def encoded(self, msg: dict[str, Any]) -> None:
        pass

    def beat(self, replica) -> None:
        pass


def run_lm(ctx) -> None:
    roles, groups = ctx.roles, ctx.groups
    events: queue.Queue = queue.Queue()
    leader = roles.is_lm_leader
    if leader and ctx.serve is not None:
        from hf_qwen3_deepstack.serving.server import HttpSink

        replica: LanguageReplica = LeaderReplica(ctx, events, HttpSink(ctx, events))
    elif leader:
        from .requests import load_requests

        sink = FileSink(ctx.options, load_requests(ctx.options.requests, ctx.options.max_new_tokens))
        replica = LeaderReplica(ctx, events, sink)
    else:
        replica = LanguageReplica(ctx, events)
    messages.Mailbox(groups.ctrl, events, stopped_expected=roles.world_size - 1 if leader else 0)
    ctx.log(f"loaded language model from {ctx.model}")
    ctx.ready()
    if leader and ctx.serve is not None:
        replica.sink.start(replica)
        ctx.on_stop_signal(replica.sink.drain)
        replica.serve_until(lambda: replica.sink.draining and not replica.dispatcher.in_flight
                            and not replica.dispatcher.queue_depth)
        replica.sink.stop()
    elif leader:
        _run_file(ctx, replica)
    else:
        while not (replica.stop_requested and replica.idle):
            replica.take_events(block=replica.idle)
            replica.round()
        replica.inbox.close()
        messages.send({"kind": "stopped", "stats": replica.stats()}, roles.lm_leader, groups.ctrl)
    ctx.log_done(replica.handled)


def _run_file(ctx, replica: LeaderReplica) -> None:
    sink: FileSink = replica.sink
    writer = sink.writer
    writer.start_clock()
    for req in sink.requests:
        if req.error:
            sink.finish(req, {"id": req.id, "error": req.error})
        else:
            replica.dispatcher.submit(req)
    replica.serve_until(lambda: writer.done)
    writer.close()
    summary = writer.summary(replica.rank_stats, ctx.roles)
    missing = [r.id for r in sink.requests if r.id not in writer.ids]
    if missing:  # cannot happen when every rank finishes; say so loudly if it does
        print(f"{LOG_PREFIX} ERROR: no result for {len(missing)} request(s): {missing[:10]}", file=sys.stderr)
    # without --output the result lines own stdout (`run ... > results.jsonl`): summary to stderr
    print(format_summary(summary), file=sys.stderr if writer.json_stream else sys.stdout, flush=True)
    if ctx.options.summary_json:
        write_summary_json(ctx.options.summary_json, summary)
    ctx.failed_requests = summary["errors"]
