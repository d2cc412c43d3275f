"""`hf-qwen3-deepstack bench {transfer,pipeline}`: sub-commands imported lazily."""

from __future__ import annotations

import argparse
import importlib
import sys

from hf_qwen3_deepstack.cli_values import HelpFormatter

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "transfer": ("hf_qwen3_deepstack.bench.transfer", "EncoderOutput send/recv vs raw dist.send, 64 KB..64 MB"),
    "serve": ("hf_qwen3_deepstack.bench.serve", "throughput and latency of the runtime vs transformers, batched"),
    "online": ("hf_qwen3_deepstack.bench.online", "Poisson load against our server and transformers serve"),
}


def add_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        p.set_defaults(_bench_module=module)
        if name == "transfer" or name in argv:  # import other benchmarks only when asked for
            try:
                importlib.import_module(module).add_arguments(p)
            except ModuleNotFoundError as e:
                if e.name != module:
                    raise
                p.set_defaults(_bench_missing=f"benchmark '{name}' is not available ({module} not found)")


def main(args: argparse.Namespace) -> int:
    if getattr(args, "_bench_missing", None):
        print(args._bench_missing, file=sys.stderr)
        return 2
    return int(importlib.import_module(args._bench_module).main(args) or 0)


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m hf_qwen3_deepstack.bench")
    add_arguments(parser, argv)
    return main(parser.parse_args(argv))
