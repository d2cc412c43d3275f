"""`hf-qwen3-deepstack serve`: the two rank groups on this machine behind an OpenAI-compatible
endpoint on the language leader (rank E). For several machines run
`torchrun ... -m hf_qwen3_deepstack.launch serve ...` on each."""

from __future__ import annotations

import argparse

from hf_qwen3_deepstack.runtime.options import RuntimeOptions, add_runtime_arguments

from .options import ServeOptions, add_serve_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runtime_arguments(parser, requests_required=False)
    add_serve_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from hf_qwen3_deepstack.runtime.cli import launch

    try:
        import fastapi, prometheus_client, sse_starlette, uvicorn  # noqa: F401, E401
    except ModuleNotFoundError as e:
        raise SystemExit(f"serve needs the 'serve' extra ({e.name} is missing): "
                         f"pip install 'hf-qwen3-deepstack[serve]'") from None
    if getattr(args, "requests", None):
        raise SystemExit("serve takes requests over HTTP; --requests is for `hf-qwen3-deepstack run`")
    return launch(RuntimeOptions.from_args(args), serve=ServeOptions.from_args(args))
