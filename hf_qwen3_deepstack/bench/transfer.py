"""`bench transfer`: our chunked send/recv against raw `dist.send` on 2 ranks: gloo on loopback
(`--device cpu`), or NCCL between GPUs 0 and 1 (`--device cuda`; headers and control over gloo).

For each payload size it measures, on the receiving rank, (a) our `send`/`recv` throughput with
one chunk per request (capacity = whole request) and (b) chunked (capacity = 1/4 of the
request's tokens), (c) raw `dist.send` of one contiguous tensor of the same bytes, and 64 KB
one-way latency (send call on rank 0 -> recv return on rank 1, same-host monotonic clock) of
ours, of raw, and (CPU) of the floor of a receiver that can time out and resume on gloo (one
message completed by a waiter thread; see `_latency_floor`).
Methods run back to back in each of `--rounds` rounds; ratios are medians of the per-round
ratios (the host's speed drifts between runs; a paired ratio cancels most of it), GB/s columns
medians over rounds. It also reports the CPU time per request of both processes together (all
threads, `getrusage`) for ours and raw: on a host with few cores that, not the wire, bounds
throughput.
Payload: an all-image request (N visual tokens, + N/8 text tokens) with K deepstack levels of
width H in bf16. Prints a markdown table; writes a PNG chart when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import resource
import statistics
import sys
import time

import torch

from hf_qwen3_deepstack.cli_values import parse_size

DEFAULT_SIZES = "64KiB,256KiB,1MiB,4MiB,8MiB,16MiB,64MiB"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="payload sizes, e.g. 64KiB,1MiB,64MiB (KB/MB: powers of 1000)")
    parser.add_argument("--hidden-size", type=int, default=2048, help="H (2048: Qwen3-VL-30B-A3B)")
    parser.add_argument("--deepstack-levels", type=int, default=3, help="K")
    parser.add_argument("--bytes-per-point", type=float, default=768e6,
                        help="bytes moved per measurement (sets the repeat count)")
    parser.add_argument("--latency-iters", type=int, default=100, help="messages per latency round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per size (and for latency); medians are reported")
    parser.add_argument("--out", default="bench_transfer", help="output prefix for .md and .png")
    parser.add_argument("--port", type=int, default=0, help="rendezvous port (0: pick a free one)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu: 2 gloo ranks; cuda: 2 ranks on GPUs 0 and 1, data over NCCL")


def _fmt_size(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 else f"{n >> 10} KB"


def make_payload(nbytes: int, hidden: int, levels: int, dtype=torch.bfloat16):
    """An EncoderOutput whose wire payload is about `nbytes`: N visual + N/8 + 4 text tokens."""
    from ..encoder_output import EncoderOutput, visual_rows_to_fields

    itemsize = torch.empty((), dtype=dtype).element_size()
    per_visual = (1 + levels) * hidden * itemsize + 40
    n = max(1, round(nbytes / (per_visual + 40 / 8)))
    s = n + n // 8 + 4
    ids = torch.randint(0, 1000, (1, s))
    image_id = 151655
    ids[0, 2 : 2 + n] = image_id
    g = torch.Generator().manual_seed(0)
    # token-major (N, 1+K, H) rows, as the encoder produces them
    visual, deepstack = visual_rows_to_fields(torch.randn(n, 1 + levels, hidden, generator=g).to(dtype))
    return EncoderOutput(
        input_ids=ids,
        position_ids=torch.arange(s).expand(3, 1, s).contiguous(),
        rope_deltas=torch.zeros(1, 1, dtype=torch.int64),
        visual_embeds=visual,
        deepstack_visual_embeds=deepstack,
        attention_mask=torch.ones(1, s, dtype=torch.int64),
        image_token_id=image_id,
    )


def wire_payload_bytes(out) -> int:
    t = out.input_ids.numel()
    rows = out.num_visual_tokens * (1 + out.num_deepstack_levels) * out.hidden_size * out.visual_embeds.element_size()
    return 8 * out.batch_size + t * 8 * (4 + (out.attention_mask is not None)) + rows


def _repeats(nbytes: int, budget: float) -> int:
    return max(3, min(300, math.ceil(budget / nbytes)))


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads (gloo's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ours(rank: int, out, capacity: int, reps: int, tag: int, recycle: bool = True) -> tuple[float | None, float]:
    """(receiver-side seconds, this rank's CPU seconds) for `reps` requests, after one warm-up
    request; the CPU time runs from the barrier before the requests to the one after them."""
    import torch.distributed as dist

    from ..transfer import EncoderOutputReceiver, EncoderOutputSender

    device = out.input_ids.device
    if rank == 0:
        tx = EncoderOutputSender(1, timeout=120, max_in_flight=4, tag=tag)
        tx.send(0, out)
        dist.barrier()
        cpu = _cpu_seconds()
        handles = [tx.isend(i + 1, out) for i in range(reps)]
        for h in handles:
            h.wait()
        dist.barrier()
        cpu = _cpu_seconds() - cpu
        tx.close()
        return None, cpu
    rx = EncoderOutputReceiver(0, capacity_tokens=capacity, timeout=120, tag=tag, device=device,
                               hidden_size=out.hidden_size, num_deepstack_levels=out.num_deepstack_levels,
                               dtype=out.visual_embeds.dtype)
    _, got = rx.recv()
    if recycle:
        rx.recycle(got)
    dist.barrier()
    cpu = _cpu_seconds()
    t0 = time.perf_counter()
    for _ in range(reps):
        _, got = rx.recv()
        if recycle:  # steady state of a serving loop: the result's memory is handed back after use
            rx.recycle(got)
    _sync(device)
    dt = time.perf_counter() - t0
    dist.barrier()
    cpu = _cpu_seconds() - cpu
    rx.close()
    return dt, cpu


def _raw(rank: int, nbytes: int, reps: int, device: torch.device) -> tuple[float | None, float]:
    import torch.distributed as dist

    x = torch.zeros(nbytes, dtype=torch.uint8, device=device)
    dist.send(x, 1) if rank == 0 else dist.recv(x, 0)
    _sync(device)
    dist.barrier()
    cpu, t0 = _cpu_seconds(), time.perf_counter()
    for _ in range(reps):
        dist.send(x, 1) if rank == 0 else dist.recv(x, 0)
    _sync(device)
    dt = time.perf_counter() - t0
    dist.barrier()
    return (dt if rank == 1 else None), _cpu_seconds() - cpu


def _latency_raw(rank: int, nbytes: int, iters: int, device: torch.device) -> float | None:
    """Raw one-way latency: rank 0 stamps, sends the message, then the stamp."""
    import torch.distributed as dist

    x = torch.zeros(nbytes, dtype=torch.uint8, device=device)
    stamp = torch.zeros(1, dtype=torch.float64)
    go = torch.zeros(1, dtype=torch.float64)
    if rank == 0:
        for _ in range(iters):
            dist.recv(go, 1)
            stamp[0] = time.perf_counter()
            dist.send(x, 1)
            dist.send(stamp, 1)
        return None
    lat = []
    for _ in range(iters):
        dist.send(go, 0)
        dist.recv(x, 0)
        _sync(device)
        t1 = time.perf_counter()
        dist.recv(stamp, 0)
        lat.append(t1 - float(stamp[0]))
    return statistics.median(lat)


def _latency_floor(rank: int, out, iters: int, tag: int) -> float | None:
    """The floor of a receiver on gloo that can time out and resume (see `transfer/_wait.py`):
    the same 64 KB as one message, assembled with one concatenation behind its header message,
    completed by a waiter thread while the caller waits on a condition with a deadline, and its
    header parsed. What ours adds on top is its protocol (a pull round trip) and per-request work."""
    import threading

    import torch.distributed as dist

    from ..transfer._wait import Waiter, settled
    from ..transfer.chunking import SendPlan
    from ..transfer.link import PeerLink
    from ..transfer.protocol import HEADER_BYTES, ChunkHeader

    link = PeerLink(1 - rank)
    stamp = torch.zeros(1, dtype=torch.float64)
    go = torch.zeros(1, dtype=torch.float64)
    plan = SendPlan.build(out)  # the pieces of our messages, built once: not timed
    h = plan.header(0, 0, plan.total)
    pieces = [plan.header_message(h, 1 << 20), plan.rows_message(h).reshape(-1).view(torch.uint8)]
    if rank == 0:
        for _ in range(iters):
            dist.recv(go, 1)
            stamp[0] = time.perf_counter()
            link.isend(torch.cat(pieces), tag).wait()
            dist.send(stamp, 1)
        return None
    waiter = Waiter("floor", threading.Condition())
    buf = torch.empty(HEADER_BYTES + (1 << 20), dtype=torch.uint8)
    lat = []
    for _ in range(iters):
        pending = waiter.submit([(link.irecv(buf, tag), buf)])
        dist.send(go, 0)
        if not settled(pending, time.monotonic() + 60) or pending[0].error is not None:
            raise RuntimeError(f"floor message not received within 60 s ({pending[0].error})")
        ChunkHeader.parse(buf[:HEADER_BYTES].view(torch.int64).tolist())
        t1 = time.perf_counter()
        dist.recv(stamp, 0)
        lat.append(t1 - float(stamp[0]))
    waiter.stop(10)
    return statistics.median(lat)


def _latency_ours(rank: int, out, iters: int, tag: int) -> float | None:
    import torch.distributed as dist

    from ..transfer import EncoderOutputReceiver, EncoderOutputSender

    stamp = torch.zeros(1, dtype=torch.float64)
    go = torch.zeros(1, dtype=torch.float64)
    if rank == 0:
        tx = EncoderOutputSender(1, timeout=60, tag=tag)
        for i in range(iters):
            dist.recv(go, 1)
            stamp[0] = time.perf_counter()
            tx.send(i, out)
            dist.send(stamp, 1)
        tx.close()
        return None
    rx = EncoderOutputReceiver(0, capacity_tokens=max(1, out.input_ids.numel()), timeout=60, tag=tag,
                               device=out.input_ids.device)
    rx.poll()  # post the first pull, as a serving receiver would have
    lat = []
    for _ in range(iters):
        dist.send(go, 0)
        _, got = rx.recv()
        t1 = time.perf_counter()
        rx.recycle(got)  # serving steady state, as in the throughput runs (after the clock stops)
        dist.recv(stamp, 0)
        lat.append(t1 - float(stamp[0]))
    rx.close()
    return statistics.median(lat)


def _worker(rank: int, port: int, cfg: dict, results) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    if cfg["device"] == "cuda":  # data over NCCL; headers, control and the bench's own stamps over gloo
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=300))
    dist.barrier()
    rows = []
    tag = 200
    for size in cfg["sizes"]:
        out = make_payload(size, cfg["hidden"], cfg["levels"]).to(device)
        nbytes = wire_payload_bytes(out)
        total = out.input_ids.numel()
        reps = max(2, _repeats(nbytes, cfg["budget"]) // cfg["rounds"])
        per_round: dict[str, list[float]] = {"single": [], "fresh": [], "chunked": [], "raw": []}
        cpu_round: dict[str, list[float]] = {"single": [], "chunked": [], "raw": []}  # both ranks, s/request
        # methods back to back in each round; medians of per-round figures and paired ratios
        for _ in range(cfg["rounds"]):
            times, cpu = {}, {}
            tag += 10
            times["raw"], cpu["raw"] = _raw(rank, nbytes, reps, device)
            times["single"], cpu["single"] = _ours(rank, out, total, reps, tag)
            tag += 10
            times["chunked"], cpu["chunked"] = _ours(rank, out, math.ceil(total / 4), reps, tag + 5)
            tag += 10
            times["fresh"], _ = _ours(rank, out, total, reps, tag + 5, recycle=False)
            sender_cpu = torch.tensor([cpu[k] for k in cpu_round], dtype=torch.float64)
            dist.send(sender_cpu, 1) if rank == 0 else dist.recv(sender_cpu, 0)
            if rank == 1:
                for k, t in times.items():
                    per_round[k].append(nbytes * reps / t)
                for k, theirs in zip(cpu_round, sender_cpu.tolist()):
                    cpu_round[k].append((cpu[k] + theirs) / reps)
        if rank == 1:
            med = {k: statistics.median(v) for k, v in per_round.items()}
            ratios = {f"{k}_ratio": statistics.median(x / r for x, r in zip(per_round[k], per_round["raw"]))
                      for k in ("single", "chunked")}
            ratios.update({f"{k}_cpu_ratio": statistics.median(c / r for c, r in zip(cpu_round[k], cpu_round["raw"]))
                           for k in ("single", "chunked")})
            ratios["raw_cpu"] = statistics.median(cpu_round["raw"])
            rows.append(dict(size=size, nbytes=nbytes, tokens=total, visual=out.num_visual_tokens, reps=reps,
                             **med, **ratios))
    out = make_payload(64 << 10, cfg["hidden"], cfg["levels"]).to(device)
    lat_ours, lat_raw, lat_floor = [], [], []
    for _ in range(cfg["rounds"]):
        tag += 10
        lat_ours.append(_latency_ours(rank, out, cfg["latency_iters"], tag))
        lat_raw.append(_latency_raw(rank, wire_payload_bytes(out), cfg["latency_iters"], device))
        if device.type == "cpu":  # the floor is gloo's
            lat_floor.append(_latency_floor(rank, out, cfg["latency_iters"], tag + 5))
    wire = _typical_prompt_wire(rank, cfg, tag + 10, device)
    dist.barrier()
    if rank == 1:
        floor = {}
        if lat_floor:
            floor = dict(lat_floor=statistics.median(lat_floor),
                         lat_floor_ratio=statistics.median(f / r for f, r in zip(lat_floor, lat_raw)))
        results.put(dict(rows=rows, lat_ours=statistics.median(lat_ours), lat_raw=statistics.median(lat_raw),
                         lat_ratio=statistics.median(o / r for o, r in zip(lat_ours, lat_raw)), wire=wire, **floor))
    dist.destroy_process_group()


def _typical_prompt_wire(rank: int, cfg: dict, tag: int, device: torch.device) -> list[dict] | None:
    """Measured bytes on the wire for a typical prompt (one 1024x1024 image = 1024 visual tokens
    + 100 text tokens), vs the seeds' full-sequence layout S x (1+K) x H x 2 bytes."""
    import torch.distributed as dist

    from ..encoder_output import EncoderOutput
    from ..transfer import EncoderOutputReceiver, EncoderOutputSender

    n, s = 1024, 1124
    rows = []
    for name, hidden in (("Qwen3-VL-30B-A3B", 2048), ("Qwen3-VL-235B-A22B", 4096)):
        levels = cfg["levels"]
        ids = torch.randint(0, 1000, (1, s))
        ids[0, 10 : 10 + n] = 151655
        out = EncoderOutput(ids, torch.zeros(3, 1, s, dtype=torch.int64), torch.zeros(1, 1, dtype=torch.int64),
                            torch.zeros(n, hidden, dtype=torch.bfloat16),
                            torch.zeros(levels, n, hidden, dtype=torch.bfloat16),
                            torch.ones(1, s, dtype=torch.int64), image_token_id=151655).to(device)
        for cap in (s, 512):
            if rank == 0:
                tx = EncoderOutputSender(1, timeout=60, tag=tag)
                tx.send(0, out)
                tx.close()
                dist.send(torch.tensor([tx.stats.bytes_sent]), 1)
            else:
                rx = EncoderOutputReceiver(0, capacity_tokens=cap, timeout=60, tag=tag, device=device)
                rx.recv()
                ctrl = rx.ctrl_bytes_sent
                rx.close()
                sent = torch.zeros(1, dtype=torch.int64)
                dist.recv(sent, 0)
                rows.append(dict(model=name, hidden=hidden, cap=cap, ours=int(sent) + ctrl,
                                 payload=wire_payload_bytes(out), seeds=s * (1 + levels) * hidden * 2))
            tag += 10
    return rows


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fig(x: float) -> str:
    """A measured figure to 3 significant digits: a slow small payload shows 0.00812, not 0.00."""
    return f"{x:.3g}"


def render(res: dict, cfg: dict) -> str:
    ranks = "2 gloo ranks on loopback" if cfg["device"] == "cpu" else "2 ranks on GPUs 0 and 1, data over NCCL"
    lines = [
        f"Payload: 1 image request, N visual tokens + N/8 text tokens, H={cfg['hidden']}, K={cfg['levels']}, bf16; "
        f"{ranks}; GB/s = 1e9 bytes/s measured at the receiver, median of {cfg['rounds']} rounds; "
        "ratios = median of the per-round paired ratios. ours = `recv()` + "
        "`recycle()` of the previous result (serving steady state); the last column allocates fresh result "
        "tensors per request (page faults) -- raw dist.send reuses one buffer.",
        "",
        "| payload | tokens | ours single-chunk GB/s | ours chunked (cap = 1/4) GB/s | raw dist.send GB/s "
        "| single / raw | chunked / raw | single, fresh result tensors GB/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {_fmt_size(r['size'])} | {r['tokens']} | {_fig(r['single'] / 1e9)} | {_fig(r['chunked'] / 1e9)} "
            f"| {_fig(r['raw'] / 1e9)} | {r['single_ratio']:.2f} | {r['chunked_ratio']:.2f} "
            f"| {_fig(r['fresh'] / 1e9)} |")
    lines += ["", "CPU time per request, sender and receiver processes together (all threads, gloo's included; "
                  "`getrusage`), median of the per-round paired ratios. On a host with few cores this bounds "
                  "throughput: with P cores a request that needs C ms of CPU takes at least C / P ms.", "",
              "| payload | raw CPU ms/request | ours single-chunk CPU / raw | ours chunked CPU / raw |",
              "| ---: | ---: | ---: | ---: |"]
    for r in res["rows"]:
        lines.append(f"| {_fmt_size(r['size'])} | {_fig(r['raw_cpu'] * 1e3)} | {r['single_cpu_ratio']:.2f} "
                     f"| {r['chunked_cpu_ratio']:.2f} |")
    lo, lr = res["lat_ours"], res["lat_raw"]
    floor = ""
    if "lat_floor" in res:
        floor = (" Floor of a resumable receiver on gloo (the same bytes as one message behind a header, "
                 "completed by a waiter thread, header parsed; no protocol round trip, no per-request work of ours): "
                 f"{res['lat_floor'] * 1e6:.0f} us, ratio {res['lat_floor_ratio']:.2f}")
    lines += ["", f"64 KB one-way latency (median of {cfg['rounds']} rounds of per-message medians): ours "
                  f"{lo * 1e6:.0f} us, raw dist.send {lr * 1e6:.0f} us, ratio {res['lat_ratio']:.2f} (median of "
                  f"paired per-round ratios).{floor}", "",
              "Bytes on the wire per request, typical prompt (1 image = 1024 visual tokens, S = 1124, bf16, "
              f"K={cfg['levels']}); ours = headers + control + ids/positions/mask + visual rows:", "",
              "| model (H) | capacity | ours bytes | of which data | seeds' layout S x (1+K) x H x 2 | ours / seeds |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for w in res["wire"]:
        lines.append(f"| {w['model']} ({w['hidden']}) | {w['cap']} | {w['ours']:,} | {w['payload']:,} "
                     f"| {w['seeds']:,} | {w['ours'] / w['seeds']:.3f} |")
    return "\n".join(lines)


def chart(res: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = res["rows"]
    xs = [r["size"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("raw", "raw dist.send"), ("single", "ours, 1 chunk"), ("chunked", "ours, 4 chunks")):
        ax.plot(xs, [r[key] / 1e9 for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [_fmt_size(x) for x in xs])
    ax.set_xlabel("payload")
    ax.set_ylabel("GB/s")
    ax.set_title("EncoderOutput transfer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def _await_result(results, procs: list, timeout: float) -> dict:
    """The receiving rank's result; a rank that dies (its traceback is printed above) or a run
    longer than `timeout` ends the benchmark with a clear error instead of a silent wait."""
    import queue

    deadline = time.monotonic() + timeout
    while True:
        try:
            return results.get(timeout=2)
        except queue.Empty:
            dead = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                why = (", ".join(f"rank {r} exited with code {c}" for r, c in dead) if dead
                       else f"no result within {timeout:g} s")
                raise SystemExit(f"[bench transfer] failed: {why}")


def main(args: argparse.Namespace) -> int:
    import torch.multiprocessing as mp

    if args.rounds < 1 or args.latency_iters < 1:
        raise SystemExit("[bench transfer] --rounds and --latency-iters must be at least 1")
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        raise SystemExit(f"[bench transfer] --device cuda needs 2 GPUs (NCCL refuses two ranks on one GPU); "
                         f"this host has {torch.cuda.device_count()}")
    cfg = dict(sizes=[parse_size(s) for s in args.sizes.split(",")], hidden=args.hidden_size,
               levels=args.deepstack_levels, budget=args.bytes_per_point, latency_iters=args.latency_iters,
               rounds=args.rounds, device=args.device)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = args.port or _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, cfg, results)) for r in range(2)]
    for p in procs:
        p.start()
    res = _await_result(results, procs, timeout=1800)
    for p in procs:
        p.join(60)
    table = render(res, cfg)
    print(table)
    with open(args.out + ".md", "w") as f:
        f.write(table + "\n")
    if chart(res, args.out + ".png"):
        print(f"\nchart: {args.out}.png")
    else:
        print("\n(matplotlib not installed: no chart; `pip install hf-qwen3-deepstack[bench]`)", file=sys.stderr)
    return 0
