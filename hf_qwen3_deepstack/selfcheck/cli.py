"""`hf-qwen3-deepstack selfcheck`: prove an install on the hardware at hand, in minutes, with tiny
random checkpoints built on the fly (nothing to download). Prints a pass/fail table with figures;
exit status 0 when nothing failed, 1 when some check failed, 2 for bad usage."""

from __future__ import annotations

import argparse
import sys

from .options import CHECK_GROUPS, FAULT_ENV, SelfcheckOptions

EXIT_FAILED, EXIT_USAGE = 1, 2
SUPPORTED_FAMILIES = ("moe", "dense")  # keys of hf_qwen3_deepstack.families.FAMILIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.epilog = (f"Checks: environment (versions, GPUs), parity (split vs transformers' monolithic model: "
                     f"fp32 max |dlogit| <= 1e-5 and equal greedy tokens; bf16 on CUDA), transfer (2 ranks: "
                     f"bit-exact edge sizes, resume, throughput vs raw send), runtime (1E+1L tokens), server. "
                     f"{FAULT_ENV} is for tests only.")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to check: cuda when available (auto), or force cpu / cuda")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the report as JSON to PATH")
    parser.add_argument("--checks", default=",".join(CHECK_GROUPS),
                        help="comma-separated check groups to run (environment always runs)")
    parser.add_argument("--family", choices=SUPPORTED_FAMILIES, default="moe",
                        help="model family of the tiny checkpoints (moe: Qwen3-VL-MoE, dense: Qwen3-VL)")
    parser.add_argument("--workdir", metavar="DIR", default=None,
                        help="where the tiny checkpoint, images and runtime files are written and kept (None: a "
                             "temp dir, removed at the end)")


def main(args: argparse.Namespace) -> int:
    from .runner import run_selfcheck

    options = SelfcheckOptions(device=args.device, json=args.json, family=args.family, workdir=args.workdir,
                               checks=tuple(c.strip() for c in args.checks.split(",") if c.strip()))
    try:
        options.check()
    except ValueError as e:
        print(f"[selfcheck] {e}", file=sys.stderr)
        return EXIT_USAGE
    report = run_selfcheck(options)
    report.print_table()
    if options.json:
        report.write_json(options.json)
    return 0 if report.ok else EXIT_FAILED
