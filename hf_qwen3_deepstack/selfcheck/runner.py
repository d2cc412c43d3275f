"""Runs the check groups in order and gathers their rows into a `SelfcheckReport`. A group that
raises becomes one failing row naming the exception, and the groups after it still run."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from . import environment, parity, runtime, server, transfer
from .context import CheckContext
from .families import FAMILIES
from .options import SelfcheckOptions
from .report import CheckResult, SelfcheckReport, Status

# group -> check; each takes the shared context and returns its rows. A new check is one entry here.
CHECKS: dict[str, Callable[[CheckContext], list[CheckResult]]] = {
    "parity": parity.run,
    "transfer": transfer.run,
    "runtime": runtime.run,
    "server": server.run,
}


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()


def run_selfcheck(options: SelfcheckOptions, log=sys.stderr) -> SelfcheckReport:
    options.check()
    t0 = time.perf_counter()
    env = environment.describe()
    device = environment.resolve_device(options.device)
    report = SelfcheckReport(device=options.device, family=options.family, environment=env)
    report.results += environment.run(env, options.device, device)
    _quiet_transformers()

    workdir = Path(options.workdir) if options.workdir else Path(tempfile.mkdtemp(prefix="hf-qwen3-deepstack-selfcheck-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        ctx = CheckContext(options, device, FAMILIES[options.family], workdir) if device is not None else None
        for group, check in CHECKS.items():
            if group not in options.checks:
                continue
            print(f"[selfcheck] {group}...", file=log, flush=True)
            started = time.perf_counter()
            if ctx is None:
                report.results.append(CheckResult(group, "all", Status.SKIP, f"no {options.device} device"))
                continue
            try:
                report.results += check(ctx)
            except Exception as e:  # noqa: BLE001 - one broken group must not hide the others
                report.results.append(CheckResult(
                    group, "crashed", Status.FAIL, f"{type(e).__name__}: {e}",
                    {"traceback": traceback.format_exc()}, time.perf_counter() - started))
    finally:
        if not options.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report.elapsed_s = time.perf_counter() - t0
    return report
