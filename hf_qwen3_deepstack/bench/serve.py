"""`hf-qwen3-deepstack bench serve`: throughput and latency of the runtime against what a user would
run instead, on the same mixed requests, in one run.

  (a) monolithic: transformers' Qwen3VLMoeForConditionalGeneration, processor + `generate`, one
      request at a time, all cores;
  (b) monolithic batched: B requests per `generate` call (left padding, the longest max_new_tokens
      of the group, each request cut to its own), all cores;
  (c) ours, 1E+1L, continuous batching (default options);
  (d) ours, 1E+1L, `--max-batch-size 1` (one sequence at a time per language rank);
  (e) ours, 1E+1L, `--serial`: one request in the system at a time, so each meets an idle system
      (single-request latency, compared with (a)'s).
Every request arrives at the start (an offline batch): TTFT and end-to-end latency count from there.
Model loading and process start-up are excluded. Token ids are compared across modes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from hf_qwen3_deepstack.cli_values import log_prefix

PREFIX = log_prefix("bench serve")
MODES = {
    "a": "(a) transformers, one request at a time",
    "b": "(b) transformers, batched B per generate",
    "c": "(c) ours 1E+1L, continuous batching",
    "d": "(d) ours 1E+1L, --max-batch-size 1",
    "e": "(e) ours 1E+1L, --serial (idle system)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint (default: the embedded tiny model)")
    parser.add_argument("--num-requests", type=int, default=48, help="requests in the mixed workload")
    parser.add_argument("--batch", type=int, default=8, help="B: requests per generate call in (b)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--modes", default="abcde", help="which of the modes a-e to run")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of (a) and (b) (0: every core available); ours use --threads 0, the "
                             "cores divided among the ranks")
    parser.add_argument("--workdir", default=None, help="where the workload and results go (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file (default: none)")
    parser.add_argument("--plot", default=None, help="also draw throughput and TTFT per mode into this PNG")


SIZES = ((64, 64), (96, 64), (128, 96), (160, 128))  # (width, height) of the workload's images


def write_workload(workdir: Path, n: int) -> list[dict]:
    """Mixed requests: images of several sizes, two-image prompts, text only; 4-24 new tokens. Every
    image is a different one, so no encoder cache can answer for the vision tower."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)

    def image(i: int, size: tuple[int, int], slot: str) -> str:
        path = workdir / f"img_{i}{slot}_{size[0]}x{size[1]}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        return str(path)

    rows = []
    for i in range(n):
        kind = i % 5
        if kind in (0, 1, 2):
            content = [{"type": "image", "image": image(i, SIZES[i % len(SIZES)], "")}]
        elif kind == 3:
            content = [{"type": "image", "image": image(i, SIZES[i % 2], "a")},
                       {"type": "image", "image": image(i, SIZES[2 + i % 2], "b")}]
        else:
            content = []
        content.append({"type": "text", "text": f"Request {i}: " + "describe what you see. " * (1 + i % 3)})
        rows.append({"id": f"req{i}", "messages": [{"role": "user", "content": content}],
                     "max_new_tokens": 4 + (i * 7) % 21})
    (workdir / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


class Monolithic:
    """(a), (b): transformers' own model and processor in this process."""

    def __init__(self, model: str, dtype: str, threads: int):
        import torch

        from hf_qwen3_deepstack.runtime.batching import eos_ids
        from hf_qwen3_deepstack.runtime.models import load_monolithic, resolve_dtype

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(threads or cores)
        self.processor, self.model = load_monolithic(model, resolve_dtype(dtype, torch.device("cpu")),
                                                     torch.device("cpu"))
        self.eos = eos_ids(self.model)

    def run(self, rows: list[dict], batch: int) -> dict:
        import torch

        t0 = time.perf_counter()
        ids, ttft, latency, own = {}, [], [], []
        with torch.inference_mode():
            for g in range(0, len(rows), batch):
                group = rows[g:g + batch]
                started = time.perf_counter()
                timer = _FirstToken()
                inputs = self._inputs([r["messages"] for r in group])
                longest = max(r["max_new_tokens"] for r in group)
                out = self.model.generate(**inputs, max_new_tokens=longest, do_sample=False, streamer=timer)
                done = time.perf_counter()
                own.append(done - started)
                for i, r in enumerate(group):
                    ids[r["id"]] = self._cut(out[i, inputs["input_ids"].shape[1]:].tolist(), r["max_new_tokens"])
                    ttft.append((timer.at or done) - t0)
                    latency.append(done - t0)
        wall = time.perf_counter() - t0
        return {**_figures(wall, ids, ttft, latency, batch_mean=float(batch)), "own_latencies": own}

    def _inputs(self, conversations: list):
        self.processor.tokenizer.padding_side = "left"
        if len(conversations) == 1:
            conversations = conversations[0]
        return self.processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True, return_tensors="pt", padding=True)

    def _cut(self, tokens: list[int], max_new: int) -> list[int]:
        tokens = tokens[:max_new]
        for i, t in enumerate(tokens):
            if t in self.eos:
                return tokens[:i + 1]
        return tokens


class _FirstToken:
    """A generate() streamer that records when the first new tokens arrive (call 1 is the prompt)."""

    def __init__(self) -> None:
        self.calls, self.at = 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


def run_ours(model: str, requests_file: Path, workdir: Path, dtype: str, tag: str, **options) -> dict:
    from hf_qwen3_deepstack.runtime.cli import launch
    from hf_qwen3_deepstack.runtime.options import RuntimeOptions

    summary_file, output = workdir / f"{tag}-summary.json", workdir / f"{tag}-results.jsonl"
    opts = RuntimeOptions(model=model, requests=str(requests_file), output=str(output), dtype=dtype, timeout=600.0,
                          no_progress=True, quiet=True, summary_json=str(summary_file), **options)
    rc = launch(opts)
    if rc != 0:
        raise SystemExit(f"{PREFIX} the runtime failed (exit {rc}); see above")
    summary = json.loads(summary_file.read_text())
    results = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    ids = {r["id"]: r["token_ids"] for r in results}
    latency = [r["latency_s"] for r in results]
    return {**_figures(summary["wall_s"], ids, [r["ttft_s"] for r in results], latency,
                       batch_mean=summary["mean_batch_size"]), "own_latencies": latency}


def _figures(wall: float, ids: dict, ttft: list[float], latency: list[float], batch_mean: float) -> dict:
    from hf_qwen3_deepstack.runtime.results import percentile

    tokens = sum(len(v) for v in ids.values())
    return {"wall_s": wall, "requests_per_s": len(ids) / wall, "tokens_per_s": tokens / wall,
            "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
            "latency_p50_s": percentile(latency, 50), "latency_p95_s": percentile(latency, 95),
            "mean_batch": batch_mean, "token_ids": ids}


def main(args: argparse.Namespace) -> int:
    from hf_qwen3_deepstack.runtime.models import resolve_model

    model = resolve_model(args.model)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-serve-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = write_workload(workdir, args.num_requests)
    req_file = workdir / "requests.jsonl"
    modes = [m for m in args.modes if m in MODES]
    print(f"{PREFIX} model {model}; {len(rows)} mixed requests (images of 4 sizes, two-image prompts, text only; "
          f"4-24 new tokens); B = {args.batch}; modes {''.join(modes)}", flush=True)
    results: dict[str, dict] = {}
    mono = Monolithic(model, args.dtype, args.threads) if {"a", "b"} & set(modes) else None
    single = {}
    for m in modes:
        print(f"{PREFIX} {MODES[m]}...", flush=True)
        if m == "a":
            results[m] = mono.run(rows, batch=1)
        elif m == "b":
            results[m] = mono.run(rows, batch=args.batch)
        elif m == "c":
            results[m] = run_ours(model, req_file, workdir, args.dtype, "c")
        elif m == "d":
            results[m] = run_ours(model, req_file, workdir, args.dtype, "d", max_batch_size=1)
        else:
            results[m] = run_ours(model, req_file, workdir, args.dtype, "e", serial=True)
    for m in ("a", "e"):  # one request in the system at a time: each request's own latency
        if m in results:
            single[m] = results[m]["own_latencies"]

    reference = next(iter(results.values()))["token_ids"]
    equal = {m: r["token_ids"] == reference for m, r in results.items()}
    table = ["| mode | req/s | output tokens/s | TTFT p50 (s) | TTFT p95 (s) | e2e p50 (s) | e2e p95 (s) | "
             "mean batch | tokens equal |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for m, r in results.items():
        table.append(f"| {MODES[m]} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['ttft_p50_s']:.3f} | "
                     f"{r['ttft_p95_s']:.3f} | {r['latency_p50_s']:.3f} | {r['latency_p95_s']:.3f} | "
                     f"{r['mean_batch']:.2f} | {'yes' if equal[m] else 'NO'} |")
    verdict = []
    ratios = {}
    if "b" in results and "c" in results:
        ratios["c_over_b"] = results["c"]["tokens_per_s"] / results["b"]["tokens_per_s"]
        verdict.append(f"(c) / (b) output tokens/s: {ratios['c_over_b']:.2f}x (goal >= 1.3x)")
    if "d" in results and "c" in results:
        ratios["c_over_d"] = results["c"]["tokens_per_s"] / results["d"]["tokens_per_s"]
        verdict.append(f"(c) / (d) output tokens/s: {ratios['c_over_d']:.2f}x (goal >= 5x)")
    if single.get("a") and single.get("e"):
        a50, e50 = _median(single["a"]), _median(single["e"])
        ratios["single_e_over_a"] = e50 / a50
        verdict.append(f"single request at an idle system, p50: ours (e) {e50 * 1e3:.1f} ms vs transformers (a) "
                       f"{a50 * 1e3:.1f} ms = {ratios['single_e_over_a']:.2f}x (goal <= 1.1x)")
    verdict.append("token ids equal to mode " + next(iter(results)) + ": "
                   + ", ".join(f"{m} {'yes' if v else 'NO'}" for m, v in equal.items()))
    print("\n" + "\n".join(table) + "\n\n" + "\n".join(verdict), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "modes": {m: {k: v for k, v in r.items() if k not in ("token_ids", "own_latencies")}
                      for m, r in results.items()},
            "ratios": ratios, "token_ids_equal": equal, "batch": args.batch, "requests": len(rows)}, indent=1))
    if args.plot:
        _plot(results, Path(args.plot))
    return 0


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2]


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [MODES[m].split(")")[0] + ")" for m in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.bar(names, [r["tokens_per_s"] for r in results.values()], color="#4C72B0")
    left.set_title("output tokens/s (higher is better)")
    right.bar(names, [r["ttft_p50_s"] for r in results.values()], color="#DD8452", label="p50")
    right.scatter(names, [r["ttft_p95_s"] for r in results.values()], color="black", marker="_", s=300, label="p95")
    right.set_title("TTFT, s (lower is better)")
    right.legend()
    fig.suptitle("bench serve: " + ", ".join(f"{MODES[m]}" for m in results), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"{PREFIX} plot written to {path}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    add_arguments(p)
    sys.exit(main(p.parse_args()))
