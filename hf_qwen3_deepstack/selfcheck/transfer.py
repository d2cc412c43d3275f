"""Check 3, the transfer between two ranks on the device's backend: gloo between two CPU processes,
NCCL (with a `cpu:gloo,cuda:nccl` group) between two GPUs. Spawns the two ranks itself
(torch.multiprocessing, FileStore rendezvous) and turns their figures into rows; what the ranks run
is in `transfer_ranks.py`."""

from __future__ import annotations

import queue
import tempfile
import time
from pathlib import Path

import torch

from .context import CheckContext
from .report import CheckResult, Status
from .transfer_ranks import TransferLane, rank_main, steps

# ours / raw send below this is flagged, as a warning (timings on shared hosts are noisy). Each of our
# recv() calls allocates its result, as a user's would, which alone costs about half of raw on CPU.
MIN_THROUGHPUT_RATIO = 0.25
LANE_DEADLINE_S = 180.0

GLOO_LANE = TransferLane(backend="gloo", device_type="cpu")
NCCL_LANE = TransferLane(backend="cpu:gloo,cuda:nccl", device_type="cuda", throughput_bytes=256 << 20,
                         throughput_reps=20)


def lanes(device: torch.device) -> tuple[list[TransferLane], list[CheckResult]]:
    """The lanes to run, and skip rows for those that cannot run here."""
    if device.type != "cuda":
        return [GLOO_LANE], []
    gpus = torch.cuda.device_count()
    if gpus >= 2:
        return [NCCL_LANE], []
    skip = CheckResult("transfer", "nccl cuda", Status.SKIP,
                       f"needs 2 GPUs (one per rank), found {gpus}; checked gloo between CPU processes instead")
    return [GLOO_LANE], [skip]


def spawn_lane(lane: TransferLane, deadline_s: float = LANE_DEADLINE_S) -> tuple[dict[int, list], str | None]:
    """Run both ranks; returns ({rank: reports}, problem) where problem names ranks that hung or died."""
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="selfcheck-transfer-") as tmp:
        init_file = str(Path(tmp) / "store")
        procs = [ctx.Process(target=rank_main, args=(r, lane, init_file, results), daemon=True) for r in (0, 1)]
        for p in procs:
            p.start()
        reports: dict[int, list] = {}
        end = time.monotonic() + deadline_s
        problem = None
        try:
            while len(reports) < 2:
                try:
                    rank, rank_reports = results.get(timeout=1.0)
                    reports[rank] = rank_reports
                except queue.Empty:
                    dead = [r for r, p in enumerate(procs) if not p.is_alive() and r not in reports]
                    if dead:
                        problem = f"rank(s) {dead} exited with code {[procs[r].exitcode for r in dead]} without a report"
                        break
                    if time.monotonic() > end:
                        missing = sorted({0, 1} - set(reports))
                        problem = f"rank(s) {missing} did not finish within {deadline_s:.0f} s (hang?)"
                        break
        finally:
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
                    p.join(5)
    return reports, problem


def _figure(name: str, f: dict) -> tuple[Status, str]:
    if name == "throughput vs raw send":
        ratio = f["ours_gb_s"] / f["raw_gb_s"]
        f["ratio"] = ratio
        text = (f"ours {f['ours_gb_s']:.2f} GB/s vs raw dist.send {f['raw_gb_s']:.2f} GB/s = {ratio:.2f}x "
                f"({f['bytes'] / 2**20:.0f} MiB x {f['reps']})")
        if not f["ok"]:
            return Status.FAIL, f"delivered data differs: {f['problem']}; {text}"
        if ratio < MIN_THROUGHPUT_RATIO:
            return Status.WARN, f"{text}, below {MIN_THROUGHPUT_RATIO}x"
        return Status.PASS, text
    if name.startswith("bit-exact"):
        text = f"{f['tokens']} tokens, {f['visual_rows']} visual rows, {f['chunks']} chunk(s), {f['bytes']} bytes"
    elif name.startswith("resume"):
        text = (f"interrupted at token {f.get('interrupted_at_token')}, resumed; {f.get('chunks')} chunks "
                f"reassembled" if "chunks" in f else "")
    else:
        text = f"TransferTimeout after {f['timeout_after_s']:.2f} s, then the request arrived" \
            if "timeout_after_s" in f else ""
    if f["ok"]:
        return Status.PASS, text + ", bit-exact"
    return Status.FAIL, f"{f['problem']}" + (f" ({text})" if text else "")


def lane_results(lane: TransferLane, reports: dict[int, list], problem: str | None) -> list[CheckResult]:
    """One row per step: the receiver's verdict, or the error of whichever rank raised."""
    by_rank = {rank: {name: (ok, value, seconds) for name, ok, value, seconds in reps}
               for rank, reps in reports.items()}
    rows = []
    for name, _method, _payload in steps(lane):
        if name == "close":
            continue
        outcome = {rank: by_rank.get(rank, {}).get(name) for rank in (0, 1)}
        errors = [f"rank {r} raised: {v[1].strip().splitlines()[-1]}" for r, v in outcome.items()
                  if v is not None and not v[0]]
        if errors:
            rows.append(CheckResult("transfer", f"{lane.name}: {name}", Status.FAIL, "; ".join(errors),
                                    {"traceback": [v[1] for v in outcome.values() if v is not None and not v[0]]}))
        elif outcome[1] is None or outcome[0] is None:
            why = problem or "an earlier step failed"
            rows.append(CheckResult("transfer", f"{lane.name}: {name}", Status.FAIL, f"not completed: {why}"))
        else:
            figures = dict(outcome[1][1])
            status, text = _figure(name, figures)
            rows.append(CheckResult("transfer", f"{lane.name}: {name}", status, text, figures, outcome[1][2]))
    if "setup" in by_rank.get(0, {}) or "setup" in by_rank.get(1, {}):
        setup = [v[1] for r in (0, 1) if (v := by_rank.get(r, {}).get("setup"))]
        rows.insert(0, CheckResult("transfer", f"{lane.name}: group setup", Status.FAIL,
                                   setup[0].strip().splitlines()[-1], {"traceback": setup}))
    return rows


def run(ctx: CheckContext) -> list[CheckResult]:
    to_run, rows = lanes(ctx.device)
    for lane in to_run:
        reports, problem = spawn_lane(lane)
        rows += lane_results(lane, reports, problem)
    return rows
