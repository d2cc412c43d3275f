"""`hf-qwen3-deepstack serve`: the two rank groups on this machine behind an OpenAI-compatible
endpoint on the language leader (rank E). For several machines run
`torchrun ... -m hf_qwen3_deepstack.launch serve ...` on each."""

from __future__ import annotations

import argparse

from hf_qwen3_deepstack.runtime.options import RuntimeOptions, add_runtime_arguments

from .options import ServeOptions, add_serve_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runtime_arguments(parser, serving=True)
    add_serve_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from hf_qwen3_deepstack.runtime.cli import launch

    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "sse_starlette", "prometheus_client", "psutil") if not importlib.util.find_spec(m)]
    if missing:
        raise SystemExit(f"serve needs the 'serve' extra ({', '.join(missing)} missing): "
                         f"pip install 'hf-qwen3-deepstack[serve]'")
    if getattr(args, "requests", None):
        raise SystemExit("serve takes requests over HTTP; --requests is for `hf-qwen3-deepstack run`")
    return launch(RuntimeOptions.from_args(args), serve=ServeOptions.from_args(args))
