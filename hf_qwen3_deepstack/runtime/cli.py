"""`hf-qwen3-deepstack run`: start E + L ranks on this machine through torch's launcher API
(`torch.distributed.launcher.api.elastic_launch`, what torchrun itself uses), each running
`python -m hf_qwen3_deepstack.launch`. For several machines use torchrun directly (see launch.py)."""

from __future__ import annotations

import argparse
import os
import sys
import uuid

from .options import add_runtime_arguments, forward_argv

PREFIX = "[hf-qwen3-deepstack]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runtime_arguments(parser)


def launch(args: argparse.Namespace, *, quiet_agent: bool = True) -> int:
    """Run the job; return 0 on success, 1 when a rank failed, 130 on Ctrl-C."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from .models import resolve_model

    if args.encoders < 1 or args.lms < 1:
        print(f"{PREFIX} --encoders and --lms must be >= 1", file=sys.stderr)
        return 2
    if not os.path.isfile(args.requests):
        print(f"{PREFIX} requests file not found: {args.requests}", file=sys.stderr)
        return 2
    args.model = resolve_model(args.model)  # build the tiny default once, before the ranks start
    nproc = args.encoders + args.lms
    if quiet_agent:
        import logging

        logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
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
    )
    cmd_args = ["-u", "-m", "hf_qwen3_deepstack.launch", *forward_argv(args)]
    try:
        elastic_launch(config, sys.executable)(*cmd_args)
    except ChildFailedError as e:
        lines = []
        for rank, failure in sorted(e.failures.items()):
            how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
            lines.append(f"rank {rank} ({_role(rank, args)}) failed with {how}")
        print(f"{PREFIX} job failed: " + "; ".join(lines) + ". The other ranks were stopped.",
              file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{PREFIX} interrupted: all ranks stopped", file=sys.stderr, flush=True)
        return 130
    except Exception as e:
        if type(e).__name__ == "SignalException":
            print(f"{PREFIX} stopped by {e}: all ranks stopped", file=sys.stderr, flush=True)
            return 130
        raise
    return 0


def _role(rank: int, args) -> str:
    return f"encoder {rank}" if rank < args.encoders else f"language {rank - args.encoders}"


def main(args: argparse.Namespace) -> int:
    return launch(args)
