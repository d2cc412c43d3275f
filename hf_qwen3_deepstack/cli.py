"""`hf-qwen3-deepstack` command line: one sub-command per module, imported only when used."""

import argparse
import importlib
import sys

from .cli_values import HelpFormatter

# sub-command -> module exposing `add_arguments(parser)` and `main(args) -> int`
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("hf_qwen3_deepstack.demo", "serve 4 requests on the tiny default model and compare with transformers"),
    "run": ("hf_qwen3_deepstack.runtime.cli", "serve a JSONL file of requests on E encoder + L language ranks"),
    "serve": ("hf_qwen3_deepstack.serving.cli", "an OpenAI-compatible chat endpoint on E encoder + L language ranks"),
    "tiny-checkpoint": ("hf_qwen3_deepstack.tiny_checkpoint.cli", "write a tiny Qwen3-VL-MoE or dense Qwen3-VL checkpoint"),
    "split": ("hf_qwen3_deepstack.hub.split_cli", "split a Qwen3-VL(-MoE) checkpoint into two Hub repos"),
    "bench": ("hf_qwen3_deepstack.bench.cli", "benchmarks: transfer | serve | online"),
    "selfcheck": ("hf_qwen3_deepstack.selfcheck.cli", "check this install: split parity, transfer, runtime, server (tiny models)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="hf-qwen3-deepstack")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        sub_parser.set_defaults(_module=module)
        if argv and argv[0] == name:
            importlib.import_module(module).add_arguments(sub_parser)
    args = parser.parse_args(argv)
    return int(importlib.import_module(args._module).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
