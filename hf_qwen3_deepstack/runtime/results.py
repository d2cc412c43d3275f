"""Result lines, the progress bar and the summary table (language leader only)."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from typing import IO, Any

from hf_qwen3_deepstack.cli_values import LOG_PREFIX

TIMING_KEYS = ("encode_s", "transfer_s", "prefill_s", "decode_s")
LATENCY_KEYS = ("queue_s", "ttft_s", "latency_s")


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    if not values:
        return float("nan")
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


class ResultWriter:
    """Writes result lines (one flush per line), drives the progress bar, builds the summary."""

    def __init__(self, path: str | None, total: int, *, progress: bool = True, stream: IO[str] | None = None,
                 json_stream: IO[str] | None = None):
        self.total = total
        self.file = open(path, "w", encoding="utf-8") if path else None
        self.json_stream = json_stream  # result lines here when there is no output file (stdout)
        self.stream = stream  # echo results here too (demo / no --output)
        self.results: list[dict[str, Any]] = []
        self.ids: set[str] = set()
        self.t0 = time.perf_counter()
        self.t_end: float | None = None
        self.bar = None
        self.tokens = 0
        self._lock = threading.Lock()
        if progress and total:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc="requests", unit="req", file=sys.stderr, dynamic_ncols=True)
            except Exception:  # pragma: no cover - tqdm is a dependency, be robust anyway
                self.bar = None

    def start_clock(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def done(self) -> bool:
        return len(self.results) >= self.total

    def write(self, result: dict[str, Any]) -> None:
        with self._lock:
            self._write(result)

    def _write(self, result: dict[str, Any]) -> None:
        if result["id"] in self.ids:  # cannot happen by construction; never write an id twice
            print(f"{LOG_PREFIX} warning: duplicate result for id {result['id']!r} ignored", file=sys.stderr)
            return
        self.ids.add(result["id"])
        self.results.append(result)
        line = json.dumps(result, ensure_ascii=False)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()
        if self.json_stream is not None:
            self.json_stream.write(line + "\n")
            self.json_stream.flush()
        if self.stream is not None:
            self.stream.write(format_result(result) + "\n")
            self.stream.flush()
        if self.bar is not None:
            self.tokens += len(result.get("token_ids", ()))
            elapsed = time.perf_counter() - self.t0
            self.bar.set_postfix_str(f"{self.tokens / elapsed if elapsed > 0 else 0:.1f} tokens/s", refresh=False)
            self.bar.update(1)
        if self.done:
            self.t_end = time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.file is not None:
            self.file.close()
            self.file = None

    def summary(self, rank_stats: dict[int, dict[str, Any]] | None = None, roles=None) -> dict[str, Any]:
        """Totals, throughput, latency percentiles, and what each rank did (from its `stopped` stats)."""
        wall = (self.t_end or time.perf_counter()) - self.t0
        ok = [r for r in self.results if "error" not in r]
        gen_tokens = sum(len(r["token_ids"]) for r in ok)
        stats = {}
        for key in TIMING_KEYS + LATENCY_KEYS:
            vals = [r[key] if key in LATENCY_KEYS else r["timings"][key] for r in ok if key in r or key in r.get("timings", {})]
            stats[key] = {
                "mean": sum(vals) / len(vals) if vals else float("nan"),
                "p50": percentile(vals, 50),
                "p95": percentile(vals, 95),
            }
        ranks = {str(rank): s for rank, s in sorted((rank_stats or {}).items())}
        lm = [s for s in ranks.values() if "steps" in s]
        steps = sum(s["steps"] for s in lm)
        return {
            "requests": len(self.results),
            "ok": len(ok),
            "errors": len(self.results) - len(ok),
            "generated_tokens": gen_tokens,
            "prompt_tokens": sum(r["prompt_tokens"] for r in ok),
            "wall_s": wall,
            "requests_per_s": len(self.results) / wall if wall > 0 else float("nan"),
            "tokens_per_s": gen_tokens / wall if wall > 0 else float("nan"),
            "mean_batch_size": sum(s["mean_batch"] * s["steps"] for s in lm) / steps if steps else 0.0,
            "timings": stats,
            "ranks": ranks,
        }


def write_summary_json(path: str, summary: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        "",
        "== hf-qwen3-deepstack summary ==",
        f"requests      {s['requests']} ({s['ok']} ok, {s['errors']} errors)",
        f"tokens        {s['generated_tokens']} generated, {s['prompt_tokens']} prompt",
        f"wall          {s['wall_s']:.3f} s",
        f"throughput    {s['tokens_per_s']:.1f} output tokens/s, {s['requests_per_s']:.2f} requests/s",
        f"batch         {s['mean_batch_size']:.2f} sequences per decode step (mean)",
        "",
        f"{'timing':<12}{'mean':>10}{'p50':>10}{'p95':>10}",
    ]
    for key, st in s["timings"].items():
        lines.append(f"{key:<12}{st['mean']:>10.4f}{st['p50']:>10.4f}{st['p95']:>10.4f}")
    for rank, st in s.get("ranks", {}).items():
        if "steps" in st:
            lines.append(f"rank {rank:<3} language: {st['handled']} requests, busy {st['busy_s']:.3f} s, "
                         f"mean batch {st['mean_batch']:.2f}, {st['joined_running']} joined a running batch")
        elif "encoded" in st:
            lines.append(f"rank {rank:<3} encoder: {st['encoded']} requests in {st['vision_batches']} vision batches")
    return "\n".join(lines)


def format_result(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"[{r['id']}] ERROR: {r['error']}"
    t = r["timings"]
    return (
        f"[{r['id']}] {r['text']!r}\n"
        f"    {len(r['token_ids'])} new tokens ({r['finish_reason']}), prompt {r['prompt_tokens']} tokens "
        f"({r['visual_tokens']} visual), encoder rank {r['encoder_rank']} -> lm rank {r['lm_rank']}, "
        f"TTFT {r['ttft_s']*1e3:.1f} ms, queue {r['queue_s']*1e3:.1f} ms, "
        f"encode {t['encode_s']*1e3:.1f} ms, transfer {t['transfer_s']*1e3:.1f} ms, "
        f"prefill {t['prefill_s']*1e3:.1f} ms, decode {t['decode_s']*1e3:.1f} ms"
    )
