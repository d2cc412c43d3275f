"""Options of `hf-qwen3-deepstack serve` beyond the runtime's (`runtime/options.py`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from hf_qwen3_deepstack.cli_values import add_option_arguments, option, options_argv, options_from_args


@dataclass
class ServeOptions:
    host: str = option("127.0.0.1", "address to bind (use 0.0.0.0 to accept other machines)")
    port: int = option(8000, "TCP port")
    api_key: str | None = option(None, "when set, /v1 requests need 'Authorization: Bearer KEY'")
    served_model_name: str | None = option(None, "the model id of /v1/models and responses (default: the checkpoint)")
    allowed_local_media_path: str | None = option(None, "local image files (paths, file:// URLs) are read only under "
                                                      "this folder; without it they are refused")
    max_body_mb: float = option(64.0, "largest request body, in MiB")
    max_media_items: int = option(32, "most images plus video frames in one request")

    def check(self) -> None:
        """ValueError naming the first option out of range."""
        for name in ("max_body_mb", "max_media_items"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be 0-65535, got {self.port}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServeOptions":
        return options_from_args(cls, args)

    def argv(self) -> list[str]:
        return options_argv(self)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(parser.add_argument_group("HTTP server"), ServeOptions)
