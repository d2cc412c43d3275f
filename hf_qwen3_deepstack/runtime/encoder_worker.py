"""Encoder rank: processor + vision tower; encodes its share of the requests and sends each
result without waiting for the language side (at most `max_inflight` requests in flight)."""

from __future__ import annotations

import time
from collections import deque

import torch

from . import control, faults
from .channel import Outbox
from .models import build_prompt, load_encoder, max_positions
from .requests import check_local_files


class RequestError(Exception):
    pass


def _wait(works) -> None:
    for w in works:
        if w is not None:
            w.wait()


def run_encoder(ctx) -> None:
    roles, groups, args, requests = ctx.roles, ctx.groups, ctx.args, ctx.requests
    processor, encoder = load_encoder(ctx.model, ctx.dtype, ctx.device)
    max_pos = max_positions(ctx.lm_model)
    outbox = Outbox(lambda lm: groups.data_for(roles.rank, lm), timeout_s=args.timeout)
    ctx.log(f"loaded encoder from {ctx.model}")
    ctx.ready()

    inflight: deque = deque()
    mine = roles.my_requests(len(requests))
    for handled, index in enumerate(mine):
        faults.maybe_die(roles.rank, handled)
        req = requests[index]
        peer = roles.lm_for(index)
        if args.serial and args.serial_gap_ms:  # the request arrives at an idle system
            time.sleep(args.serial_gap_ms / 1e3)
        t0 = time.perf_counter()
        try:
            if req.error:
                raise RequestError(req.error)
            check_local_files(req.messages)
            try:
                inputs = build_prompt(processor, req.messages)
            except Exception as e:
                raise RequestError(f"could not build the prompt: {type(e).__name__}: {e}") from e
            prompt_len = int(inputs["input_ids"].shape[1])
            new_tokens = req.max_new_tokens or args.max_new_tokens
            if max_pos is not None and prompt_len + new_tokens > max_pos:
                raise RequestError(
                    f"request too long: {prompt_len} prompt tokens + {new_tokens} new tokens exceed the model's "
                    f"{max_pos} positions"
                )
            inputs = inputs.to(ctx.device)
            with torch.inference_mode():
                out = encoder.encode(**inputs)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            encode_s = time.perf_counter() - t0
            error = None
        except Exception as e:  # a bad request: report it, keep going
            error = str(e) if isinstance(e, (RequestError, FileNotFoundError)) else f"{type(e).__name__}: {e}"
            ctx.log(f"request {req.id!r}: {error}")
            encode_s = time.perf_counter() - t0
        # Sending is not a per-request matter: a data-plane failure ends the job (it propagates).
        if error is None:
            works = [
                control.isend(control.Control(control.PAYLOAD, index, encode_s, roles.rank), peer, groups.ctrl),
                outbox.isend(peer, index, out),
            ]
        else:
            works = [control.isend(control.Control(control.ERROR, index, encode_s, roles.rank, error), peer,
                                   groups.ctrl)]
        inflight.append(works)
        if args.serial:  # latency mode: the next request starts when this one is generated
            done = control.recv_finished(peer, groups.ctrl)
            if done != index:
                raise RuntimeError(f"rank {peer} finished request {done}, expected {index}")
        while len(inflight) > args.max_inflight:
            _wait(inflight.popleft())
    while inflight:
        _wait(inflight.popleft())
    outbox.close()
    ctx.log_done(len(mine))
    faults.maybe_die(roles.rank, len(mine))
