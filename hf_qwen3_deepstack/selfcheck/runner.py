"""Runs the check groups in order and gathers their rows into a `SelfcheckReport`. A group that
raises becomes one failing row naming the exception, and the groups after it still run."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from hf_qwen3_deepstack.families import FAMILIES

from . import environment, parity, runtime, server, transfer
from .context import CheckContext
from .options import SelfcheckOptions
from .report import CheckResult, SelfcheckReport, Status

# group -> check; each takes the shared context and returns its rows. A new check is one entry here.
CHECKS: dict[str, Callable[[CheckContext], list[CheckResult]]] = {
    "parity": parity.run,
    "transfer": transfer.run,
    "runtime": runtime.run,
    "server": server.run,
}


@contextlib.contextmanager
def _work_directory(path: str | None) -> Iterator[Path]:
    """`path` (created, kept), or a temp dir removed at the end."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="hf-qwen3-deepstack-selfcheck-") as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No transformers warnings or loading bars between the table's rows; restored afterwards."""
    import huggingface_hub.utils as hub
    from transformers.utils import logging

    verbosity, bars, hub_bars_off = logging.get_verbosity(), logging.is_progress_bar_enabled(), \
        hub.are_progress_bars_disabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    hub.disable_progress_bars()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
        if not hub_bars_off:
            hub.enable_progress_bars()


def run_selfcheck(options: SelfcheckOptions, log=sys.stderr) -> SelfcheckReport:
    options.check()
    t0 = time.perf_counter()
    env = environment.describe()
    device = environment.resolve_device(options.device)
    report = SelfcheckReport(device=options.device, family=options.family, environment=env,
                             resolved_device=None if device is None else str(device))
    report.results += environment.run(env, options.device, device)

    with _work_directory(options.workdir) as workdir, _quiet_transformers():
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
    report.elapsed_s = time.perf_counter() - t0
    return report
