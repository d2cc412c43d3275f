"""`hf-qwen3-deepstack run`: start E + L ranks on this machine through torch's launcher API
(`torch.distributed.launcher.api.elastic_launch`, what torchrun itself uses), each running
`python -m hf_qwen3_deepstack.launch`. For several machines use torchrun directly (see launch.py)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import uuid

from .options import RuntimeOptions, add_runtime_arguments, needs_default_model

from hf_qwen3_deepstack.cli_values import LOG_PREFIX as PREFIX
# `python -m hf_qwen3_deepstack.launch`, except that Ctrl-C during the (slow) imports ends the rank
# quietly instead of printing a KeyboardInterrupt traceback per rank. Once running, the rank
# installs its own handlers (launch._install_signal_watcher).
_BOOTSTRAP = (
    "import os, runpy, signal; signal.signal(signal.SIGINT, lambda *_: os._exit(130)); "
    "runpy.run_module('hf_qwen3_deepstack.launch', run_name='__main__', alter_sys=True)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runtime_arguments(parser)


def launch(args: RuntimeOptions, *, quiet_agent: bool = True, serve=None) -> int:
    """Run the job; return 0 when every request succeeded, 3 when some failed (every result line
    written), 1 when a rank failed, 2 for bad usage, 130 on Ctrl-C."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from hf_qwen3_deepstack.launch import EXIT_REQUESTS_FAILED

    from .models import resolve_model
    from .roles import Roles

    try:
        args.check()
        if serve is not None:
            serve.check()
    except ValueError as e:
        print(f"{PREFIX} {e}", file=sys.stderr)
        return 2
    if serve is None and (args.requests is None or not os.path.isfile(args.requests)):
        print(f"{PREFIX} requests file not found: {args.requests}", file=sys.stderr)
        return 2
    from hf_qwen3_deepstack.hub.source import SourceError, locate_checkpoint

    for flag in ("model", "encoder_model", "lm_model"):  # a bad path or an unreachable Hub fails here, in seconds
        value = getattr(args, flag)
        if value is not None:
            try:
                setattr(args, flag, locate_checkpoint(value))
            except SourceError as e:
                print(f"{PREFIX} --{flag.replace('_', '-')}: {e}", file=sys.stderr)
                return 2
    if needs_default_model(args):
        args.model = resolve_model(None)  # build the tiny default once, before the ranks start
    nproc = args.encoders + args.lms
    if quiet_agent:
        import logging

        logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    signals = {}
    if serve is not None:
        from hf_qwen3_deepstack.serving.drain import ELASTIC_SIGNALS, DrainOnSignal

        if "signals_to_handle" in {f.name for f in dataclasses.fields(LaunchConfig)}:  # torch >= 2.8
            signals["signals_to_handle"] = ELASTIC_SIGNALS  # SIGTERM and SIGINT drain the server instead
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"hf-qwen3-deepstack-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
        **signals,
    )
    mode = ["serve", *serve.argv()] if serve is not None else ["run"]
    cmd_args = ["-u", "-c", _BOOTSTRAP, *mode, *args.argv()]
    drain = DrainOnSignal(leader_rank=args.encoders) if serve is not None else None
    try:
        with drain or contextlib.nullcontext():
            elastic_launch(config, sys.executable)(*cmd_args)
    except ChildFailedError as e:
        if any(f.exitcode == EXIT_REQUESTS_FAILED for f in e.failures.values()):  # the leader's verdict, after every line was written
            print(f"{PREFIX} some requests failed: see their error lines (exit status {EXIT_REQUESTS_FAILED})",
                  file=sys.stderr, flush=True)
            return EXIT_REQUESTS_FAILED
        lines = []
        for rank, failure in sorted(e.failures.items()):
            if failure.exitcode < 0:
                how = f"failed with signal {failure.signal_name()}"
            elif failure.exitcode > 128:
                how = f"stopped on {_signal_name(failure.exitcode - 128)}"
            else:
                how = f"failed with exit code {failure.exitcode}"
            lines.append(f"rank {rank} ({Roles(rank, nproc, args.encoders, args.lms).describe(rank)}) {how}")
        if drain is not None and drain.received:  # asked to stop (before the server was up, or a second time)
            print(f"{PREFIX} stopped by a signal: " + "; ".join(lines), file=sys.stderr, flush=True)
            return 130
        print(f"{PREFIX} job failed: " + "; ".join(lines) + ". The other ranks were stopped.",
              file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{PREFIX} interrupted: all ranks stopped", file=sys.stderr, flush=True)
        return 130
    except Exception as e:
        if type(e).__name__ == "SignalException":
            sig = getattr(e, "sigval", None)
            name = getattr(sig, "name", str(sig))
            what = "interrupted (Ctrl-C)" if name == "SIGINT" else f"stopped by {name}"
            print(f"{PREFIX} {what}: all ranks stopped", file=sys.stderr, flush=True)
            return 130
        raise
    return 0


def _signal_name(num: int) -> str:
    import signal

    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def main(args: argparse.Namespace) -> int:
    return launch(RuntimeOptions.from_args(args))
