"""torchrun entry point: one process per rank, E encoder ranks then L language ranks.

    torchrun --nproc-per-node E+L -m hf_qwen3_deepstack.launch --encoders E --lms L \
        --requests requests.jsonl --output results.jsonl [--model PATH_OR_HUB_ID]

Multi-node: the same command on every node with torchrun's `--nnodes N --node-rank i
--rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id JOB` (global ranks are assigned node by
node, so with `--nproc-per-node` = GPUs per node the first E global ranks are the encoders).

Failure handling: a rank that raises prints one clear line and exits non-zero; torchrun then
terminates the others (SIGTERM), which print why they stop and exit at once, even when blocked
inside a gloo/NCCL call (a dedicated thread waits for the signal). Ranks on other nodes that are
not told by their agent hit `--timeout` on their next wait.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

PREFIX = "[hf-qwen3-deepstack]"
_STATE = {"who": "rank ?"}


def _install_signal_watcher() -> None:
    """End this rank at once, with a message, on SIGTERM (torchrun stopping the job because another
    rank failed), SIGINT (Ctrl-C) or SIGHUP, even while the main thread is blocked inside a gloo /
    NCCL wait where a Python handler would never run: the C-level handler writes the signal number
    to a wakeup pipe (whichever thread received it), and a watcher thread reads it and exits."""
    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    for sig in sigs:
        signal.signal(sig, lambda *_: None)

    def watch() -> None:
        while True:
            data = os.read(r, 1)
            if not data:
                return
            sig = data[0]
            if sig not in sigs:
                continue
            name = signal.Signals(sig).name
            why = "interrupted (Ctrl-C)" if sig == signal.SIGINT else "another rank failed or the job was stopped"
            print(f"{PREFIX} {_STATE['who']}: stopping on {name}: {why}", file=sys.stderr, flush=True)
            os._exit(128 + sig)

    threading.Thread(target=watch, name="signal-watcher", daemon=True).start()


@dataclass
class Context:
    args: Any
    roles: Any
    groups: Any
    requests: list
    model: str  # the checkpoint this rank's half loads from
    device: Any
    dtype: Any
    lm_model: str  # the language half's checkpoint (its config bounds the prompt length)

    def log(self, msg: str) -> None:
        if not getattr(self.args, "quiet", False):
            print(f"{PREFIX} {_STATE['who']}: {msg}", file=sys.stderr, flush=True)

    def fatal(self, msg: str) -> None:
        print(f"{PREFIX} {_STATE['who']}: FATAL: {msg}", file=sys.stderr, flush=True)

    def ready(self) -> None:
        """All ranks have loaded their half; the clock of the run starts after this."""
        import torch.distributed as dist

        dist.barrier(group=self.groups.ctrl)
        self._t_ready = (time.perf_counter(), time.process_time())

    def log_done(self, handled: int) -> None:
        wall0, cpu0 = getattr(self, "_t_ready", (time.perf_counter(), time.process_time()))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        self.log(f"done: {handled} requests in {wall:.2f} s, CPU {cpu:.2f} s ({100 * cpu / max(wall, 1e-9):.0f}%)")


def run_rank(args: argparse.Namespace) -> int:
    _install_signal_watcher()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        print(f"{PREFIX} start this with `torchrun --nproc-per-node E+L -m hf_qwen3_deepstack.launch ...` "
              f"or `hf-qwen3-deepstack run ...`", file=sys.stderr)
        return 2

    import torch
    import torch.distributed as dist

    from hf_qwen3_deepstack.runtime.models import resolve_device, resolve_dtype, resolve_model
    from hf_qwen3_deepstack.runtime.options import needs_default_model
    from hf_qwen3_deepstack.runtime.requests import load_requests
    from hf_qwen3_deepstack.runtime.roles import Roles, make_groups

    if args.quiet:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    rank = int(os.environ["RANK"])
    _STATE["who"] = f"rank {rank}"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device()
    backend = "nccl" if device.type == "cuda" else "gloo"
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda" and local_ranks > torch.cuda.device_count():
        print(f"{PREFIX} {_STATE['who']}: {local_ranks} ranks on this node but only {torch.cuda.device_count()} "
              f"visible GPU(s): NCCL needs one GPU per rank (run with CUDA_VISIBLE_DEVICES= to use CPU/gloo)",
              file=sys.stderr, flush=True)
        return 2
    timeout = timedelta(seconds=args.timeout)
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    try:
        dist.init_process_group(backend, timeout=timeout, **kwargs)
        roles = Roles(dist.get_rank(), dist.get_world_size(), args.encoders, args.lms)
        _STATE["who"] = f"rank {rank} ({roles.role_name})"
        groups = make_groups(roles)
        if needs_default_model(args):  # embedded tiny default: one process per node builds it, the rest reuse it
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                model = resolve_model(None)
                dist.barrier(group=groups.ctrl)
            else:
                dist.barrier(group=groups.ctrl)
                model = resolve_model(None)
        else:
            model = args.model
        requests = load_requests(args.requests)
        encoder_model, lm_model = args.encoder_model or model, args.lm_model or model
        ctx = Context(args, roles, groups, requests, encoder_model if roles.is_encoder else lm_model, device,
                      resolve_dtype(args.dtype, device), lm_model)
        if roles.is_encoder:
            from hf_qwen3_deepstack.runtime.encoder_worker import run_encoder

            run_encoder(ctx)
        else:
            from hf_qwen3_deepstack.runtime.lm_worker import run_lm

            run_lm(ctx)
        dist.barrier(group=groups.ctrl)
    except Exception as e:
        msg = f"{type(e).__name__}: {e}"
        if "timed out" in msg.lower() or "timeout" in msg.lower():
            msg += f" (no peer answered within --timeout {args.timeout:g}s: a rank died or hangs)"
        elif "connection" in msg.lower() or "peer" in msg.lower():
            msg += " (a peer rank died)"
        print(f"{PREFIX} {_STATE['who']}: FATAL: {msg}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)  # never block in process-group teardown with dead peers
    dist.destroy_process_group()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from hf_qwen3_deepstack.runtime.options import add_runtime_arguments

    parser = argparse.ArgumentParser(prog="torchrun --nproc-per-node E+L -m hf_qwen3_deepstack.launch",
                                     description=__doc__.split("\n\n")[0])
    add_runtime_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_rank(args)


if __name__ == "__main__":
    sys.exit(main())
