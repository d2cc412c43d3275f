"""`hf-qwen3-deepstack bench pipeline`: does the encoder/language split overlap, and what does
a request pay for crossing the wire?

On the same requests, one thread per process:
  (a) monolithic: one process runs transformers' Qwen3VLMoeForConditionalGeneration, processor +
      generate, request after request (encode then generate);
  (b) split: 1 encoder rank + 1 language rank of the runtime (started through torch's launcher API),
      so request i+1 is encoded while request i is generated;
  (c) split, one request at a time (`--serial`): each request arrives at an idle system
      (`--gap-ms` of idle time before it) and the next starts only when it is generated;
  (d) monolithic, one request at a time, with the same idle gap before each request.
Throughput ratio = (a) wall / (b) wall (goal >= 1.6x). Single-request latency overhead = p50 of
(c) / p50 of (d) - 1 (goal <= +10%): split = processor + encode + transfer + prefill + decode,
monolithic = processor + generate. Both sides of each ratio run in the same round, one after the
other; the headline is the median of the per-round ratios over `--rounds` rounds (the host may be
shared: its speed drifts between runs, paired ratios cancel most of that). Model loading and process
start-up are excluded everywhere. The token ids of every mode and round are compared (they must be
equal).

The default workload (tiny model, 8 images of 256x256 per request, 8 new tokens) balances encode
and generate cost, which is where overlap pays most; on real checkpoints pass --model and tune
--images-per-request / --max-new-tokens to your traffic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

PREFIX = "[bench pipeline]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint (default: the embedded tiny model)")
    parser.add_argument("--num-requests", type=int, default=24)
    parser.add_argument("--images-per-request", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of (a)-(d); the headline ratios are medians of the per-round ratios")
    parser.add_argument("--gap-ms", type=float, default=100.0,
                        help="(c), (d): idle time before each request (a lone request arrives at an idle system)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")


def write_workload(workdir: Path, n: int, k: int, size: int, max_new_tokens: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i in range(max(k, 1) * 2):  # a small pool of distinct images, reused across requests
        p = workdir / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        images.append(str(p))
    rows = []
    for r in range(n):
        content = [{"type": "image", "image": images[(r + j) % len(images)]} for j in range(k)]
        content.append({"type": "text", "text": f"Describe picture set {r}."})
        rows.append({"id": f"req{r}", "messages": [{"role": "user", "content": content}],
                     "max_new_tokens": max_new_tokens})
    path = workdir / "requests.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


class SerialRunner:
    """(a): transformers' monolithic model in this process; processor + generate, request after request."""

    def __init__(self, model: str, threads: int, dtype: str):
        import torch
        from transformers import Qwen3VLMoeForConditionalGeneration

        from hf_qwen3_deepstack.runtime.models import resolve_dtype
        from hf_qwen3_deepstack.tiny_checkpoint.video import load_processor

        torch.set_num_threads(threads)
        self.processor = load_processor(model)
        self.model = Qwen3VLMoeForConditionalGeneration.from_pretrained(
            model, dtype=resolve_dtype(dtype, torch.device("cpu"))).eval()

    def run(self, requests: list[dict], gap_s: float = 0.0) -> dict:
        import torch

        from hf_qwen3_deepstack.runtime.models import build_prompt

        latencies, tokens, ids = [], 0, {}
        start = time.perf_counter()
        with torch.inference_mode():
            for r in requests:
                if gap_s:
                    time.sleep(gap_s)
                t0 = time.perf_counter()
                inputs = build_prompt(self.processor, r["messages"])
                out = self.model.generate(**inputs, max_new_tokens=r["max_new_tokens"], do_sample=False)
                latencies.append(time.perf_counter() - t0)
                new = out[0, inputs["input_ids"].shape[1]:].tolist()
                tokens += len(new)
                ids[r["id"]] = new
        wall = time.perf_counter() - start
        return {"wall_s": wall, "tokens": tokens, "latencies": latencies, "token_ids": ids}


def run_split(model: str, requests_file: Path, workdir: Path, threads: int, dtype: str, max_new_tokens: int,
              serial: bool = False, gap_ms: float = 0.0) -> dict:
    from hf_qwen3_deepstack.runtime.cli import launch

    tag = "split-serial" if serial else "split"
    summary_file, output = workdir / f"{tag}-summary.json", workdir / f"{tag}-results.jsonl"
    args = argparse.Namespace(
        model=model, requests=str(requests_file), output=str(output), encoders=1, lms=1,
        max_new_tokens=max_new_tokens, dtype=dtype, capacity_tokens=8192, max_inflight=2, timeout=600.0,
        threads=threads, print_results=False, no_progress=True, quiet=True, summary_json=str(summary_file),
        serial=serial, serial_gap_ms=gap_ms,
    )
    rc = launch(args)
    if rc != 0:
        raise SystemExit(f"{PREFIX} the split run failed (exit {rc})")
    summary = json.loads(summary_file.read_text())
    results = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    errors = [r for r in results if "error" in r]
    if errors:
        raise SystemExit(f"{PREFIX} the split run returned errors: {errors[:3]}")
    latencies = [sum(r["timings"].values()) for r in results]
    return {"wall_s": summary["wall_s"], "tokens": summary["generated_tokens"], "latencies": latencies,
            "token_ids": {r["id"]: r["token_ids"] for r in results},
            "stage_p50": {k: v["p50"] for k, v in summary["timings"].items()}}


MODES = {
    "a": "(a) monolithic, back to back",
    "b": "(b) split 1E+1L, pipelined",
    "c": "(c) split 1E+1L, one request at a time",
    "d": "(d) monolithic, one request at a time",
}


def _stats(r: dict) -> dict:
    from hf_qwen3_deepstack.runtime.results import percentile

    lat = r["latencies"]
    return {"requests": len(lat), "wall_s": r["wall_s"], "requests_per_s": len(lat) / r["wall_s"],
            "tokens_per_s": r["tokens"] / r["wall_s"], "latency_min_s": min(lat),
            "latency_p50_s": percentile(lat, 50), "latency_mean_s": sum(lat) / len(lat),
            "latency_p95_s": percentile(lat, 95)}


def main(args: argparse.Namespace) -> int:
    from hf_qwen3_deepstack.runtime.models import resolve_model

    if args.rounds < 1 or args.num_requests < 1:
        raise SystemExit(f"{PREFIX} --rounds and --num-requests must be at least 1")
    model = resolve_model(args.model)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    workdir.mkdir(parents=True, exist_ok=True)
    req_file = write_workload(workdir, args.num_requests, args.images_per_request, args.image_size,
                              args.max_new_tokens)
    requests = [json.loads(line) for line in req_file.read_text().splitlines()]
    gap = args.gap_ms
    print(f"{PREFIX} model {model}; {len(requests)} requests x {args.images_per_request} images "
          f"{args.image_size}x{args.image_size}, {args.max_new_tokens} new tokens, {args.threads} thread(s)/process; "
          f"{args.rounds} rounds; (c), (d): {gap:g} ms idle before each request", flush=True)

    runner = SerialRunner(model, args.threads, args.dtype)
    split = dict(model=model, requests_file=req_file, workdir=workdir, threads=args.threads, dtype=args.dtype,
                 max_new_tokens=args.max_new_tokens)
    run = {
        "a": lambda: runner.run(requests),
        "b": lambda: run_split(**split),
        "c": lambda: run_split(**split, serial=True, gap_ms=gap),
        "d": lambda: runner.run(requests, gap_s=gap / 1e3),
    }
    rounds: dict[str, list[dict]] = {k: [] for k in MODES}
    for i in range(args.rounds):
        for key, name in MODES.items():
            print(f"{PREFIX} round {i + 1}/{args.rounds}: {name}...", flush=True)
            rounds[key].append(run[key]())

    reference = rounds["a"][0]["token_ids"]
    same = all(r["token_ids"] == reference for rs in rounds.values() for r in rs)
    stats = {k: [_stats(r) for r in rs] for k, rs in rounds.items()}
    # paired, per round: both sides of a ratio ran back to back
    ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(stats["a"], stats["b"])]
    overheads = [c["latency_p50_s"] / d["latency_p50_s"] - 1 for c, d in zip(stats["c"], stats["d"])]
    ratio, overhead = statistics.median(ratios), statistics.median(overheads)
    rows = [{"mode": MODES[k], **{f: statistics.median([s[f] for s in ss]) for f in ss[0]}} for k, ss in stats.items()]
    table = [
        "| mode | requests | wall (s) | req/s | tokens/s | latency min (ms) | p50 (ms) | mean (ms) | p95 (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        table.append(f"| {r['mode']} | {r['requests']:.0f} | {r['wall_s']:.2f} | {r['requests_per_s']:.2f} | "
                     f"{r['tokens_per_s']:.1f} | {r['latency_min_s']*1e3:.1f} | {r['latency_p50_s']*1e3:.1f} | "
                     f"{r['latency_mean_s']*1e3:.1f} | {r['latency_p95_s']*1e3:.1f} |")
    stage = {k: {s: statistics.median([r["stage_p50"][s] for r in rounds[k]]) for s in rounds[k][0]["stage_p50"]} for k in "bc"}
    verdict = [
        f"throughput ratio (b)/(a), median of {args.rounds} paired rounds: {ratio:.2f}x  "
        f"(goal >= 1.6x: {'met' if ratio >= 1.6 else 'NOT met'}); per round: "
        + " ".join(f"{x:.2f}" for x in ratios),
        f"single-request latency overhead, split (c) vs monolithic (d), p50, median of {args.rounds} paired rounds: "
        f"{overhead*100:+.1f}%  (goal <= +10%: {'met' if overhead <= 0.10 else 'NOT met'}); per round: "
        + " ".join(f"{x*100:+.1f}%" for x in overheads),
        "for reference, (c) p50 vs (a) back to back (no idle gap, always warm): " + " ".join(
            f"{c['latency_p50_s'] / a['latency_p50_s'] * 100 - 100:+.1f}%" for c, a in zip(stats["c"], stats["a"])),
        "split stage p50 (ms), pipelined (b): " + ", ".join(
            f"{k} {v*1e3:.1f}" for k, v in stage["b"].items() if k != "latency_s"),
        "split stage p50 (ms), one at a time (c): " + ", ".join(
            f"{k} {v*1e3:.1f}" for k, v in stage["c"].items() if k != "latency_s"),
        f"token ids identical in every mode and round: {same}",
        "table: median over rounds of each figure; wall (s) of (c) and (d) includes the idle gaps",
    ]
    print("\n" + "\n".join(table) + "\n\n" + "\n".join(verdict), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "rows": rows, "throughput_ratio": ratio, "throughput_ratios": ratios, "latency_overhead": overhead,
            "latency_overheads": overheads, "gap_ms": gap, "token_ids_equal": same, "split_stage_p50_s": stage,
        }, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    add_arguments(p)
    sys.exit(main(p.parse_args()))
