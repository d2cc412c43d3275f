"""`hf-qwen3-deepstack bench online`: an open-loop load generator (Poisson arrivals at given request
rates, streamed chat completions with images, in the style of vLLM's `benchmark_serving`) against
our `serve` (1E+1L) and, in the same run, `transformers serve` of the same monolithic checkpoint.

Per rate and server: completed requests/s, TTFT p50/p99 (first streamed content) and end-to-end
p50/p99. A server sustains a rate when it completes at least 90% of it; the headline compares TTFT
p99 at the highest rate `transformers serve` sustains, and how far our rate goes before our TTFT
p99 doubles from its lowest-rate value.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hf_qwen3_deepstack.cli_values import log_prefix

PREFIX = log_prefix("bench online")
# `transformers serve` needs torchvision for Qwen3-VL's video processor; without it (CPU hosts)
# the package's PIL video processor stands in, as it does for our own ranks.
_TRANSFORMERS_SERVE = (
    "import sys; from hf_qwen3_deepstack.tiny_checkpoint.video import install; install(); "
    "from transformers.cli.transformers import main; sys.argv = ['transformers', 'serve'] + sys.argv[1:]; main()"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint (default: the embedded tiny model)")
    parser.add_argument("--rates", default="1,2,4,8,16", help="request rates to offer, requests/s, comma-separated")
    parser.add_argument("--requests-per-rate", type=int, default=48, help="requests sent at each rate")
    parser.add_argument("--max-tokens", type=int, default=16, help="new tokens per request")
    parser.add_argument("--servers", default="ours,transformers", help="which servers: ours, transformers")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file (default: none)")
    parser.add_argument("--plot", default=None, help="also draw TTFT p99 against the rate into this PNG")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(kind: str, model: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    if kind == "ours":
        cmd = [sys.executable, "-m", "hf_qwen3_deepstack.cli", "serve", "--model", model, "--port", str(port),
               "--quiet", "--no-progress"]
    else:
        cmd = [sys.executable, "-c", _TRANSFORMERS_SERVE, model, "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen, base: str, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{PREFIX} the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{PREFIX} the server did not start in 300 s: {log}")


def _workload(workdir: Path, n: int) -> list[list[dict]]:
    from hf_qwen3_deepstack.bench.serve import write_workload

    chats = []
    for row in write_workload(workdir, n):
        content = []
        for part in row["messages"][0]["content"]:
            if part["type"] == "image":
                data = base64.b64encode(Path(part["image"]).read_bytes()).decode()
                content.append({"type": "image_url", "image_url": {"url": "data:image/png;base64," + data}})
            else:
                content.append(part)
        chats.append([{"role": "user", "content": content}])
    return chats


async def _one(client, model: str, messages: list[dict], max_tokens: int, t_send: float) -> tuple[float, float]:
    first = None
    stream = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, stream=True)
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
    done = time.perf_counter()
    return (first or done) - t_send, done - t_send


async def _run_rate(base: str, model: str, chats: list[list[dict]], rate: float, max_tokens: int) -> dict:
    import openai

    from hf_qwen3_deepstack.runtime.results import percentile

    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
    rng = random.Random(0)
    tasks, sent = [], []
    for n, messages in enumerate(chats):
        if n:
            await asyncio.sleep(rng.expovariate(rate))
        sent.append(time.perf_counter())
        tasks.append(asyncio.create_task(_one(client, model, messages, max_tokens, sent[-1])))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - sent[0]
    offered = (len(sent) - 1) / (sent[-1] - sent[0]) if len(sent) > 1 else rate
    await client.close()
    ok = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"{PREFIX} {len(errors)} request(s) failed at rate {rate}: {errors[0]!r}", flush=True)
    ttft, e2e = [r[0] for r in ok], [r[1] for r in ok]
    return {"rate": rate, "offered": offered, "completed": len(ok), "throughput": len(ok) / wall,
            "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
            "e2e_p50": percentile(e2e, 50), "e2e_p99": percentile(e2e, 99)}


def main(args: argparse.Namespace) -> int:
    from hf_qwen3_deepstack.runtime.models import resolve_model

    model = resolve_model(args.model)
    rates = [float(r) for r in args.rates.split(",") if r]
    servers = [s for s in args.servers.split(",") if s in ("ours", "transformers")]
    workdir = Path(tempfile.mkdtemp(prefix="bench-online-"))
    n = args.requests_per_rate
    chats = _workload(workdir, n * len(rates) + 4)  # different images for every request: no cache hits
    warm_up, per_rate = chats[-4:], [chats[k * n:(k + 1) * n] for k in range(len(rates))]
    print(f"{PREFIX} model {model}; rates {rates} requests/s; {args.requests_per_rate} streamed requests per rate, "
          f"{args.max_tokens} new tokens; servers {servers}", flush=True)
    figures: dict[str, list[dict]] = {}
    for kind in servers:
        log = workdir / f"{kind}.log"
        proc, base = _start(kind, model, log)
        try:
            _wait_ready(proc, base, log)
            asyncio.run(_run_rate(base, model, warm_up, rates[0], args.max_tokens))
            figures[kind] = []
            for rate, rate_chats in zip(rates, per_rate):
                print(f"{PREFIX} {kind}: {rate:g} requests/s...", flush=True)
                figures[kind].append(asyncio.run(_run_rate(base, model, rate_chats, rate, args.max_tokens)))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    table = ["| server | rate (req/s) | offered | throughput (req/s) | TTFT p50 (s) | TTFT p99 (s) | e2e p50 (s) | "
             "e2e p99 (s) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind, rows in figures.items():
        for r in rows:
            table.append(f"| {kind} | {r['rate']:g} | {r['offered']:.2f} | {r['throughput']:.2f} | {r['ttft_p50']:.3f} | "
                         f"{r['ttft_p99']:.3f} | {r['e2e_p50']:.3f} | {r['e2e_p99']:.3f} |")
    verdict = _verdict(figures)
    print("\n" + "\n".join(table) + "\n\n" + "\n".join(verdict), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "verdict": verdict}, indent=1))
    if args.plot:
        _plot(figures, Path(args.plot))
    return 0


def _sustained(row: dict) -> bool:
    """Kept up: completed at least 90% of the rate actually offered (Poisson draws vary around the target)."""
    return row["throughput"] >= 0.9 * row["offered"]


def _verdict(figures: dict[str, list[dict]]) -> list[str]:
    out = []
    ours = figures.get("ours", [])
    if ours:
        base = ours[0]["ttft_p99"]
        within = [r["rate"] for r in ours if r["ttft_p99"] <= 2 * base and _sustained(r)]
        out.append(f"ours: highest rate sustained with TTFT p99 under twice its lowest-rate value: "
                   f"{max(within) if within else 'none'} requests/s")
    theirs = figures.get("transformers", [])
    if ours and theirs:
        held = [r for r in theirs if _sustained(r)]
        if held:
            top = max(held, key=lambda r: r["rate"])
            mine = next(r for r in ours if r["rate"] == top["rate"])
            out.append(f"at {top['rate']:g} requests/s, the highest rate transformers serve sustains: TTFT p99 ours "
                       f"{mine['ttft_p99']:.3f} s vs transformers {top['ttft_p99']:.3f} s")
            within = [r["rate"] for r in ours if r["ttft_p99"] <= 2 * ours[0]["ttft_p99"] and _sustained(r)]
            if within:
                out.append(f"ours sustains {max(within) / top['rate']:.1f}x that rate before its TTFT p99 doubles")
        else:
            out.append("transformers serve sustained none of the rates")
    return out


def _plot(figures: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for kind, rows in figures.items():
        ax.plot([r["rate"] for r in rows], [r["ttft_p99"] for r in rows], marker="o", label=kind)
    ax.set_xlabel("offered rate (requests/s)")
    ax.set_ylabel("TTFT p99 (s)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("bench online: streamed chat completions with images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"{PREFIX} plot written to {path}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    add_arguments(p)
    sys.exit(main(p.parse_args()))
