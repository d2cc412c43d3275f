"""Encoder rank: processor + vision tower. Takes the requests the leader assigns, builds their
prompts on a preparation thread (overlapping the vision tower's current batch; the requests waiting
together go through the processor in one call), encodes the ready ones in one vision-tower call
bounded by a patch budget, and sends each `EncoderOutput` to the language rank the leader chose,
without waiting for it to be received."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from . import faults, messages
from .channel import Outbox
from .encoder_batching import VisionCache, encode_batch, patch_count
from .models import load_encoder, max_positions, warm_up_encoder
from .prompt_batching import build_prompts
from .remote_media import MediaError, has_remote_media, inline_remote_media
from .requests import check_local_files


class RequestError(Exception):
    pass


@dataclass
class Prepared:
    index: int
    lm: int
    inputs: Any  # processor output (BatchFeature), or None with `error`
    started: float  # perf_counter when preparation began
    error: str | None = None

    @property
    def patches(self) -> int:
        return patch_count(self.inputs)


def run_encoder(ctx) -> None:
    roles, groups, opts = ctx.roles, ctx.groups, ctx.options
    processor, encoder = load_encoder(ctx.model, ctx.dtype, ctx.device)
    warm_up_encoder(processor, encoder)
    max_pos = max_positions(ctx.lm_model)
    outbox = Outbox(roles.lm_ranks, lambda lm: groups.data_for(roles.rank, lm), timeout_s=opts.timeout)
    events: queue.Queue = queue.Queue()
    messages.Mailbox(groups.ctrl, events)
    ctx.log(f"loaded encoder from {ctx.model}")
    ctx.ready()

    ready: queue.Queue[Prepared | None] = queue.Queue()
    preparer = threading.Thread(target=_prepare_loop, args=(ctx, events, processor, max_pos, ready),
                                name="prompt-preparer", daemon=True)
    preparer.start()
    leader = roles.lm_leader
    handled = 0
    batch_sizes: list[int] = []
    cache = VisionCache(opts.encoder_cache_mb << 20) if opts.encoder_cache_mb else None
    stopping = False
    while not stopping:
        items = [ready.get()]
        while items[-1] is not None:  # everything prepared so far
            try:
                items.append(ready.get_nowait())
            except queue.Empty:
                break
        if items[-1] is None:
            items.pop()
            stopping = True
        todo = []
        for item in items:
            if item.error is None:
                todo.append(item)
            else:
                messages.send({"kind": "failed", "index": item.index, "error": item.error, "status": 400}, leader,
                              groups.ctrl)
                handled += 1
        while todo:
            batch, todo = _next_batch(todo, opts.encoder_batch_patches, opts.encoder_batch_requests)
            faults.maybe_delay(roles.rank)
            report = _encode_and_send(ctx, encoder, cache, batch, outbox, handled)
            if report["ok"]:
                messages.send({"kind": "encoded", "items": report["ok"], **report["cache"]}, leader, groups.ctrl)
            for index, error in report["failed"]:
                messages.send({"kind": "failed", "index": index, "error": error, "status": 500}, leader, groups.ctrl)
            handled += len(batch)
            batch_sizes.append(len(batch))
        outbox.reap()
    preparer.join()
    outbox.close()  # returns once each language rank closed its receiver
    stats = {"encoded": handled, "vision_batches": len(batch_sizes),
             "mean_vision_batch": sum(batch_sizes) / len(batch_sizes) if batch_sizes else 0.0}
    messages.send({"kind": "stopped", "stats": stats}, leader, groups.ctrl)
    ctx.log_done(handled)


def _next_batch(items: list[Prepared], budget: int, max_requests: int) -> tuple[list[Prepared], list[Prepared]]:
    """The longest prefix of `items` within the patch budget and request count (at least one item)."""
    patches = 0
    for i, item in enumerate(items):
        patches += item.patches
        if i and (patches > budget or i >= max_requests):
            return items[:i], items[i:]
    return items, []


def _encode_and_send(ctx, encoder, cache: VisionCache | None, batch: list[Prepared], outbox: Outbox,
                     handled: int) -> dict[str, Any]:
    """Encode `batch` in one vision call (one by one if that fails, so a bad request fails alone)."""
    t0 = time.perf_counter()
    hits = misses = 0
    try:
        with torch.inference_mode():
            outs, hits, misses = encode_batch(encoder, [b.inputs for b in batch], cache)
        results: list[Any] = list(outs)
    except Exception:
        results = []
        for b in batch:
            try:
                with torch.inference_mode():
                    results.append(encoder.encode(**b.inputs))
            except Exception as e:
                results.append(RequestError(f"encoding failed: {type(e).__name__}: {e}"))
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    vision_s = time.perf_counter() - t0
    report: dict[str, Any] = {"ok": [], "failed": [], "cache": {"cache_hits": hits, "cache_misses": misses}}
    for n, (item, out) in enumerate(zip(batch, results)):
        faults.maybe_die(ctx.roles.rank, handled + n)
        if isinstance(out, Exception):
            ctx.log(f"request {item.index}: {out}")
            report["failed"].append((item.index, str(out)))
            continue
        sent_at = time.time()
        outbox.isend(item.lm, item.index, out)
        report["ok"].append({"index": item.index, "encode_s": round(t0 - item.started + vision_s, 6),
                             "sent_at": sent_at, "bytes": out.nbytes()})
    return report


def _prepare_loop(ctx, events: queue.Queue, processor, max_pos: int | None, ready: queue.Queue) -> None:
    """Assignments -> processor outputs (or errors); None after `stop`. The assignments waiting
    together (up to --encoder-batch-requests) go through the processor in one call."""
    stop = False
    while not stop:
        group: list[dict[str, Any]] = []
        event = events.get()
        while True:
            if event[0] == "error":
                ctx.die(event[1])
            _, src, msg = event
            if msg["kind"] == "stop":
                stop = True
                break
            if msg["kind"] != "assign":
                ctx.die(f"unexpected {msg['kind']!r} message from rank {src}")
            group.append(msg)
            if len(group) >= ctx.options.encoder_batch_requests:
                break
            try:
                event = events.get_nowait()
            except queue.Empty:
                break
        for item in _prepare(ctx, group, processor, max_pos):
            ready.put(item)
    ready.put(None)


def _prepare(ctx, group: list[dict[str, Any]], processor, max_pos: int | None) -> list[Prepared]:
    started = time.perf_counter()
    out, todo = [], []
    for msg in group:
        try:
            check_local_files(msg["messages"])
            todo.append(msg)
        except FileNotFoundError as e:
            out.append(_failed(ctx, msg, str(e), started))
    unfetched = _fetch_remote_media(todo, ctx.options.media_fetch_timeout)
    out += [_failed(ctx, msg, unfetched[i], started) for i, msg in enumerate(todo) if i in unfetched]
    todo = [msg for i, msg in enumerate(todo) if i not in unfetched]
    for msg, inputs in zip(todo, build_prompts(processor, [m["messages"] for m in todo])):
        if isinstance(inputs, Exception):
            out.append(_failed(ctx, msg, f"could not build the prompt: {type(inputs).__name__}: {inputs}", started))
            continue
        prompt_len, new_tokens = int(inputs["input_ids"].shape[1]), int(msg["max_new_tokens"])
        if max_pos is not None and prompt_len + new_tokens > max_pos:
            out.append(_failed(ctx, msg, f"request too long: {prompt_len} prompt tokens + {new_tokens} new tokens "
                                         f"exceed the model's {max_pos} positions", started))
            continue
        try:
            out.append(Prepared(int(msg["index"]), int(msg["lm"]), inputs.to(ctx.device), started))
        except Exception as e:  # noqa: BLE001 - this request fails, the encoder goes on
            out.append(_failed(ctx, msg, f"{type(e).__name__}: {e}", started))
    return out


def _fetch_remote_media(group: list[dict[str, Any]], timeout_s: float) -> dict[int, str]:
    """Inline the http(s) images of a requests file's requests (the server inlines its own), all of the
    group's at once, each request within `timeout_s`; position in `group` -> error of those that failed."""
    remote = [i for i, msg in enumerate(group) if has_remote_media(msg["messages"])]
    if not remote:
        return {}

    async def fetch_all() -> list:
        return await asyncio.gather(*(inline_remote_media(group[i]["messages"], timeout_s) for i in remote),
                                    return_exceptions=True)

    return {i: str(e) if isinstance(e, MediaError) else f"{type(e).__name__}: {e}"
            for i, e in zip(remote, asyncio.run(fetch_all())) if e is not None}


def _failed(ctx, msg: dict[str, Any], error: str, started: float) -> Prepared:
    """A bad request: reported to the leader, and the encoder goes on."""
    ctx.log(f"request {msg.get('id', msg['index'])!r}: {error}")
    return Prepared(int(msg["index"]), int(msg["lm"]), None, started, error=error)
