"""Language rank: an independent replica holding only the language half. It takes the next
request from whichever encoder is ready, generates (greedy by default) and hands the result line
to the language leader, which writes the output file, the progress bar and the summary."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from . import control, faults
from .channel import Inbox
from .models import generate, load_lm
from .results import ResultWriter, error_result, format_summary, ok_result


def run_lm(ctx) -> None:
    roles, groups, args, requests = ctx.roles, ctx.groups, ctx.args, ctx.requests
    tokenizer, lm = load_lm(ctx.model, ctx.dtype, ctx.device)
    inbox = Inbox(lambda encoder: groups.data_for(encoder, roles.rank), capacity_tokens=args.capacity_tokens,
                  device=ctx.device, timeout_s=args.timeout)
    ctx.log(f"loaded language model from {ctx.model}")

    writer = None
    collector = None
    mine = roles.my_requests(len(requests))
    if roles.is_lm_leader:
        writer = ResultWriter(
            args.output, total=len(requests), progress=not args.no_progress,
            stream=sys.stdout if args.print_results else None,
            json_stream=sys.stdout if args.output is None and not args.print_results else None,
        )
        remote = len(requests) - len(mine)
        if remote:
            collector = threading.Thread(target=_collect, args=(ctx, writer, remote), daemon=True,
                                         name="result-collector")
            collector.start()
    ctx.ready()
    if writer is not None:
        writer.start_clock()

    expected = set(mine)
    for handled in range(len(mine)):
        faults.maybe_die(roles.rank, handled)
        msg = control.recv_any(groups.ctrl)
        if msg.index not in expected:
            raise RuntimeError(f"rank {roles.rank} got request index {msg.index} from rank {msg.sender}, "
                               f"which is not scheduled here (or arrived twice)")
        expected.discard(msg.index)
        req = requests[msg.index]
        if msg.kind == control.ERROR:
            result = error_result(req.id, msg.error or "encoding failed")
        else:
            t0 = time.perf_counter()
            index, out = inbox.recv(msg.sender)
            transfer_s = time.perf_counter() - t0
            if index != msg.index:
                raise RuntimeError(f"payload for request {index} from rank {msg.sender}, expected {msg.index}")
            try:
                out.validate()
                max_new = req.max_new_tokens or args.max_new_tokens
                new, prefill_s, decode_s = generate(lm, out, max_new)
                text = tokenizer.decode(new, skip_special_tokens=True)
                result = ok_result(
                    req.id, text, new, out.seq_len, out.num_visual_tokens,
                    {"encode_s": msg.encode_s, "transfer_s": transfer_s, "prefill_s": prefill_s,
                     "decode_s": decode_s},
                    encoder_rank=msg.sender, lm_rank=roles.rank,
                )
                inbox.recycle(msg.sender, out)  # its memory serves the next payload from that encoder
            except Exception as e:  # e.g. out of memory on this request: report it, keep going
                ctx.log(f"request {req.id!r}: generation failed: {type(e).__name__}: {e}")
                result = error_result(req.id, f"generation failed: {type(e).__name__}: {e}")
        if writer is not None:
            writer.write(result)
        else:
            control.send_bytes(json.dumps(result, ensure_ascii=False).encode("utf-8"), roles.lm_leader,
                               groups.results)
        if args.serial:
            control.send_finished(msg.index, msg.sender, groups.ctrl)
    faults.maybe_die(roles.rank, len(mine))
    inbox.close()
    ctx.log_done(len(mine))

    if writer is not None:
        if collector is not None:
            collector.join()
        writer.close()
        summary = writer.summary()
        missing = [r.id for r in requests if r.id not in writer.ids]
        if missing:  # cannot happen when every rank finishes; say so loudly if it does
            print(f"[hf-qwen3-deepstack] ERROR: no result for {len(missing)} request(s): {missing[:10]}",
                  file=sys.stderr)
        # without --output the result lines own stdout (`run ... > results.jsonl`): summary to stderr
        print(format_summary(summary), file=sys.stderr if writer.json_stream else sys.stdout, flush=True)
        if args.summary_json:
            with open(args.summary_json, "w") as f:
                json.dump(summary, f, indent=1)


def _collect(ctx, writer: ResultWriter, count: int) -> None:
    try:
        for _ in range(count):
            _, data = control.recv_bytes_any(ctx.groups.results)
            writer.write(json.loads(data.decode("utf-8")))
    except BaseException as e:  # a replica died: end this rank now, clearly
        ctx.fatal(f"lost a language replica while collecting results: {type(e).__name__}: {e}")
        os._exit(1)
