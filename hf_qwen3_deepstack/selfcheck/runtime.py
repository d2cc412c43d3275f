"""Check 4, the runtime: `hf-qwen3-deepstack run` with 1 encoder + 1 language rank (on 2 GPUs when
there are 2, one per rank; else on CPU) serves the check prompts, and every request's tokens equal
the monolithic model's greedy tokens on the same device, in fp32."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from .context import CheckContext
from .inputs import NEW_TOKENS
from .report import CheckResult, Status

RUNTIME_TIMEOUT_S = 120.0
OUTPUT_TAIL_CHARS = 2000


@contextlib.contextmanager
def _captured_output(log: Path) -> Iterator[None]:
    """Send this process's and its children's stdout/stderr (file descriptors 1 and 2) to `log`:
    the ranks' own lines and summary table would break up the selfcheck's table."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "wb") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextlib.contextmanager
def _cpu_only(enabled: bool) -> Iterator[None]:
    """Hide the GPUs from the ranks (they pick CUDA whenever they see one)."""
    if not enabled:
        yield
        return
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


def run(ctx: CheckContext) -> list[CheckResult]:
    from hf_qwen3_deepstack.runtime.cli import launch
    from hf_qwen3_deepstack.runtime.options import RuntimeOptions

    rows = []
    on_gpus = ctx.device.type == "cuda" and torch.cuda.device_count() >= 2
    if ctx.device.type == "cuda" and not on_gpus:
        rows.append(CheckResult("runtime", "1E+1L on 2 GPUs", Status.SKIP,
                                f"needs 2 GPUs (one per rank), found {torch.cuda.device_count()}; ran on CPU instead"))
    device = torch.device("cuda", 0) if on_gpus else torch.device("cpu")
    name = f"1E+1L {'2 GPUs' if on_gpus else 'cpu'}, fp32"

    t0 = time.perf_counter()
    messages = ctx.messages()
    workdir = ctx.workdir / "runtime"
    workdir.mkdir(parents=True, exist_ok=True)
    requests, output, log = workdir / "requests.jsonl", workdir / "results.jsonl", workdir / "ranks.log"
    requests.write_text("".join(json.dumps({"id": rid, "messages": m, "max_new_tokens": NEW_TOKENS}) + "\n"
                                for rid, m in messages.items()))
    # serial: one request at a time, each decoded alone, like the monolithic generate it is compared with
    opts = RuntimeOptions(model=str(ctx.checkpoint()), requests=str(requests), output=str(output), encoders=1, lms=1,
                          max_new_tokens=NEW_TOKENS, dtype="float32", serial=True, timeout=RUNTIME_TIMEOUT_S,
                          no_progress=True, quiet=True)
    with _captured_output(log), _cpu_only(not on_gpus):
        rc = launch(opts)
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text(errors="replace")[-OUTPUT_TAIL_CHARS:].strip().splitlines()
        last = tail[-1] if tail else "no output"
        return rows + [CheckResult("runtime", name, Status.FAIL, f"`run` exited with status {rc}: {last}",
                                   {"exit_status": rc, "log_tail": "\n".join(tail)}, seconds)]

    results = {}
    if output.exists():
        results = {r["id"]: r for r in map(json.loads, output.read_text().splitlines()) if r}
    differ = {}
    for rid in messages:
        expected = ctx.monolithic_tokens(rid, device, torch.float32)
        got = results.get(rid, {}).get("token_ids")
        if got != expected:
            differ[rid] = results.get(rid, {}).get("error") or f"tokens {got}, expected {expected}"
    figure = f"{len(messages) - len(differ)}/{len(messages)} requests' tokens equal to the monolithic model's"
    if differ:
        figure += ": " + "; ".join(f"{rid}: {why}" for rid, why in differ.items())
    return rows + [CheckResult("runtime", name, Status.FAIL if differ else Status.PASS, figure,
                               {"requests": len(messages), "tokens_equal": not differ, "differ": differ},
                               seconds)]
