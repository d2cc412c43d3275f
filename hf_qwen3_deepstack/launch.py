"""torchrun entry point: one process per rank, E encoder ranks then L language ranks.

    torchrun --nproc-per-node E+L -m hf_qwen3_deepstack.launch --encoders E --lms L \
        --requests requests.jsonl --output results.jsonl [--model PATH_OR_HUB_ID]

Multi-node: the same command on every node with torchrun's `--nnodes N --node-rank i
--rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id JOB` (global ranks are assigned node by
node, so with `--nproc-per-node` = GPUs per node the first E global ranks are the encoders).

Failure handling: a rank that raises prints one clear line and exits non-zero; torchrun then
terminates the others (SIGTERM), which print why they stop and exit at once, even when blocked
inside a gloo/NCCL call (a dedicated thread waits for the signal). A rank that hangs without dying
(stopped, deadlocked, its node gone) stops beating: the first rank to notice, after `--timeout`
seconds, names it and exits, and torchrun stops the rest.

Exit status: 0 when every request succeeded, 3 (`EXIT_REQUESTS_FAILED`) when every result line was
written but some requests failed, 1 when a rank failed, 2 for bad usage.
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

from hf_qwen3_deepstack.cli_values import LOG_PREFIX as PREFIX  # noqa: E402
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
            if _STATE.get("finished"):  # past the final barrier: the job is over, leave quietly
                os._exit(0)
            if _STATE.get("serving") and sig != signal.SIGHUP:
                if not _STATE.get("leader"):
                    continue  # serving: the other ranks stop when the leader tells them (or fail with it)
                drain = _STATE.pop("drain", None)
                if drain is not None:  # the leader's first stop signal: finish what is in flight, then exit
                    print(f"{PREFIX} {_STATE['who']}: {signal.Signals(sig).name}: no new requests; finishing "
                          f"those in flight (again to stop at once)", file=sys.stderr, flush=True)
                    drain()
                    continue
            name = signal.Signals(sig).name
            why = "interrupted (Ctrl-C)" if sig == signal.SIGINT else "another rank failed or the job was stopped"
            print(f"{PREFIX} {_STATE['who']}: stopping on {name}: {why}", file=sys.stderr, flush=True)
            os._exit(128 + sig)

    threading.Thread(target=watch, name="signal-watcher", daemon=True).start()


EXIT_REQUESTS_FAILED = 3  # every result line was written, but some requests failed


@dataclass
class Context:
    options: Any  # RuntimeOptions
    roles: Any
    groups: Any
    model: str  # the checkpoint this rank's half loads from
    device: Any
    dtype: Any
    lm_model: str  # the language half's checkpoint (its config bounds the prompt length)
    serve: Any = None  # ServeOptions when serving over HTTP
    heartbeat: Any = None  # this rank's Heartbeat (the server's /health reads the peers' from it)
    failed_requests: int = 0  # set by the language leader

    def on_stop_signal(self, drain) -> None:
        """Serving: the first SIGTERM / Ctrl-C calls `drain()` instead of ending the rank."""
        _STATE["drain"] = drain

    def log(self, msg: str) -> None:
        if not self.options.quiet:
            print(f"{PREFIX} {_STATE['who']}: {msg}", file=sys.stderr, flush=True)

    def fatal(self, msg: str) -> None:
        print(f"{PREFIX} {_STATE['who']}: FATAL: {msg}", file=sys.stderr, flush=True)

    def die(self, msg: str) -> None:
        """End this rank now (from any thread): the launcher then stops the others."""
        self.fatal(msg)
        sys.stdout.flush()
        os._exit(1)

    def ready(self) -> None:
        """All ranks have loaded their half; the clock of the run starts after this."""
        import torch.distributed as dist

        dist.barrier(group=self.groups.ctrl)
        self._t_ready = (time.perf_counter(), time.process_time())

    def log_done(self, handled: int) -> None:
        wall0, cpu0 = getattr(self, "_t_ready", (time.perf_counter(), time.process_time()))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        self.log(f"done: {handled} requests in {wall:.2f} s, CPU {cpu:.2f} s ({100 * cpu / max(wall, 1e-9):.0f}%)")


def default_threads() -> int:
    """CPU cores this process may use, shared among the ranks of this node."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def run_rank(opts, serve=None) -> int:
    _install_signal_watcher()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        print(f"{PREFIX} start this with `torchrun --nproc-per-node E+L -m hf_qwen3_deepstack.launch ...` "
              f"or `hf-qwen3-deepstack run ...`", file=sys.stderr)
        return 2

    import torch
    import torch.distributed as dist

    from hf_qwen3_deepstack.runtime.liveness import Heartbeat
    from hf_qwen3_deepstack.runtime.models import resolve_device, resolve_dtype, resolve_model
    from hf_qwen3_deepstack.runtime.options import needs_default_model
    from hf_qwen3_deepstack.runtime.roles import Roles, make_groups

    if opts.quiet:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    rank = int(os.environ["RANK"])
    _STATE["who"] = f"rank {rank}"
    device = resolve_device()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    elif device.type == "cpu":
        torch.set_num_threads(default_threads())
    backend = "nccl" if device.type == "cuda" else "gloo"
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda" and local_ranks > torch.cuda.device_count():
        print(f"{PREFIX} {_STATE['who']}: {local_ranks} ranks on this node but only {torch.cuda.device_count()} "
              f"visible GPU(s): NCCL needs one GPU per rank (run with CUDA_VISIBLE_DEVICES= to use CPU/gloo)",
              file=sys.stderr, flush=True)
        return 2
    # Waits on the groups are not bounded by a wall clock (a rank may legitimately wait for work for a
    # long time); the heartbeat ends the job when a peer stops making progress.
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    heartbeat = None
    try:
        dist.init_process_group(backend, timeout=GROUP_TIMEOUT, **kwargs)
        roles = Roles(dist.get_rank(), dist.get_world_size(), opts.encoders, opts.lms)
        _STATE["who"] = f"rank {rank} ({roles.role_name})"
        _STATE["serving"], _STATE["leader"] = serve is not None, roles.is_lm_leader
        heartbeat = Heartbeat(dist.distributed_c10d._get_default_store(), roles.rank, roles.world_size,
                              opts.timeout, lambda peer, silent: _silent_peer(roles, peer, silent)).start()
        groups = make_groups(roles, timeout=GROUP_TIMEOUT)
        if needs_default_model(opts):  # embedded tiny default: one process per node builds it, the rest reuse it
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                model = resolve_model(None)
                dist.barrier(group=groups.ctrl)
            else:
                dist.barrier(group=groups.ctrl)
                model = resolve_model(None)
        else:
            model = opts.model
        if roles.rank == 0:  # a bad path or an unreachable Hub: one rank says so, in seconds
            from hf_qwen3_deepstack.hub.source import locate_checkpoint

            for spec in {s for s in (opts.model, opts.encoder_model, opts.lm_model) if s}:
                locate_checkpoint(spec)
        encoder_model, lm_model = opts.encoder_model or model, opts.lm_model or model
        ctx = Context(opts, roles, groups, encoder_model if roles.is_encoder else lm_model, device,
                      resolve_dtype(opts.dtype, device), lm_model, serve, heartbeat)
        if roles.is_encoder:
            from hf_qwen3_deepstack.runtime.encoder_worker import run_encoder

            run_encoder(ctx)
        else:
            from hf_qwen3_deepstack.runtime.lm_worker import run_lm

            run_lm(ctx)
        dist.barrier(group=groups.ctrl)
        _STATE["finished"] = True
        heartbeat.stop()
    except Exception as e:
        msg = f"{type(e).__name__}: {e}"
        if "connection" in msg.lower() or "peer" in msg.lower():
            msg += " (a peer rank died)"
        print(f"{PREFIX} {_STATE['who']}: FATAL: {msg}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)  # never block in process-group teardown with dead peers
    dist.destroy_process_group()
    return EXIT_REQUESTS_FAILED if ctx.failed_requests else 0


GROUP_TIMEOUT = timedelta(days=7)


def _silent_peer(roles, peer: int, silent: float) -> None:
    print(f"{PREFIX} {_STATE['who']}: FATAL: rank {peer} ({roles.describe(peer)}) sent no heartbeat for "
          f"{silent:.0f} s (--timeout): it hangs, is stopped, or its node is unreachable; stopping the job",
          file=sys.stderr, flush=True)
    os._exit(1)


def build_parser(serve: bool = False) -> argparse.ArgumentParser:
    from hf_qwen3_deepstack.runtime.options import add_runtime_arguments

    prog = "torchrun --nproc-per-node E+L -m hf_qwen3_deepstack.launch" + (" serve" if serve else "")
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_runtime_arguments(parser, serving=serve)
    if serve:
        from hf_qwen3_deepstack.serving.options import add_serve_arguments

        add_serve_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`launch [run] OPTIONS` serves a requests file; `launch serve OPTIONS` an HTTP endpoint."""
    from hf_qwen3_deepstack.runtime.options import RuntimeOptions

    argv = sys.argv[1:] if argv is None else list(argv)
    serve = bool(argv) and argv[0] == "serve"
    if argv and argv[0] in ("run", "serve"):
        argv = argv[1:]
    parser = build_parser(serve)
    args = parser.parse_args(argv)
    opts = RuntimeOptions.from_args(args)
    try:
        opts.check()
    except ValueError as e:
        parser.error(str(e))
    if serve:
        from hf_qwen3_deepstack.serving.options import ServeOptions

        serve_opts = ServeOptions.from_args(args)
        try:
            serve_opts.check()
        except ValueError as e:
            parser.error(str(e))
        return run_rank(opts, serve_opts)
    return run_rank(opts)


if __name__ == "__main__":
    sys.exit(main())
