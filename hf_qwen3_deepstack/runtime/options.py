"""Options shared by `torchrun -m hf_qwen3_deepstack.launch`, `hf-qwen3-deepstack run` and `demo`."""

from __future__ import annotations

import argparse


def add_runtime_arguments(parser: argparse.ArgumentParser, *, requests_required: bool = True) -> None:
    g = parser.add_argument_group("runtime")
    g.add_argument("--model", default=None,
                   help="checkpoint directory or Hub id (default: the embedded tiny Qwen3-VL-MoE, built once and cached)")
    g.add_argument("--encoder-model", default=None,
                   help="encoder repo made by `split` (or any checkpoint) for the encoder ranks (default: --model)")
    g.add_argument("--lm-model", default=None,
                   help="language repo made by `split` (or any checkpoint) for the language ranks (default: --model)")
    g.add_argument("--requests", required=requests_required, help="JSONL file, one request per line")
    g.add_argument("--output", default=None, help="JSONL file for result lines, written by the language leader (default: stdout)")
    g.add_argument("--encoders", type=int, default=1, help="E: number of encoder ranks (global ranks 0..E-1)")
    g.add_argument("--lms", type=int, default=1, help="L: number of language ranks (global ranks E..E+L-1)")
    g.add_argument("--max-new-tokens", type=int, default=32,
                   help="default for requests without their own max_new_tokens")
    g.add_argument("--dtype", default="auto",
                   help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16")
    g.add_argument("--capacity-tokens", type=int, default=8192,
                   help="receive buffer of each language rank, in tokens (longer requests arrive in chunks of this size)")
    g.add_argument("--max-inflight", type=int, default=2,
                   help="requests an encoder may have sent but not yet delivered")
    g.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds any collective/point-to-point wait may take before the job is declared dead")
    g.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    g.add_argument("--print-results", action="store_true", help="language leader also prints readable results")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--quiet", action="store_true", help="no per-rank log lines, no transformers warnings/bars")
    g.add_argument("--serial", action="store_true",
                   help="one request at a time per encoder: encode the next only when the previous is generated "
                        "(no overlap; for latency measurements)")
    g.add_argument("--serial-gap-ms", type=float, default=0.0,
                   help="with --serial: idle time before each request (requests arriving one by one at an idle system)")
    g.add_argument("--summary-json", default=None, help=argparse.SUPPRESS)


def forward_argv(args: argparse.Namespace) -> list[str]:
    """argv for `python -m hf_qwen3_deepstack.launch` reproducing `args`."""
    out: list[str] = []
    for name in ("model", "encoder_model", "lm_model", "requests", "output", "encoders", "lms", "max_new_tokens", "dtype", "capacity_tokens",
                 "max_inflight", "timeout", "threads", "serial_gap_ms", "summary_json"):
        value = getattr(args, name, None)
        if value is not None:
            out += ["--" + name.replace("_", "-"), str(value)]
    for flag in ("print_results", "no_progress", "quiet", "serial"):
        if getattr(args, flag, False):
            out.append("--" + flag.replace("_", "-"))
    return out


def needs_default_model(args: argparse.Namespace) -> bool:
    """True when some role has no checkpoint: neither --model nor its own --encoder-/--lm-model."""
    return args.model is None and (args.encoder_model is None or args.lm_model is None)
