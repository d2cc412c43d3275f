"""Options of `hf-qwen3-deepstack serve` beyond the runtime's (`runtime/options.py`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class ServeOptions:
    host: str = _opt("127.0.0.1", "address to bind (use 0.0.0.0 to accept other machines)")
    port: int = _opt(8000, "TCP port")
    api_key: str | None = _opt(None, "when set, /v1 requests need 'Authorization: Bearer KEY'")
    served_model_name: str | None = _opt(None, "the model id of /v1/models and responses (default: the checkpoint)")
    allowed_local_media_path: str | None = _opt(None, "local image files (paths, file:// URLs) are read only under "
                                                      "this folder; without it they are refused")
    max_body_mb: float = _opt(64.0, "largest request body, in MiB")
    max_media_items: int = _opt(32, "most images plus video frames in one request")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServeOptions":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def argv(self) -> list[str]:
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out += ["--" + f.name.replace("_", "-"), str(value)]
        return out


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("HTTP server")
    for f in fields(ServeOptions):
        kind = {"int": int, "float": float}.get(f.type, str)
        shown = "" if f.default is None else " (default: %(default)s)"
        g.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, help=f.metadata["help"] + shown)
