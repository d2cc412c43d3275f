"""What the command-line tools share: the log-line prefix, size and dtype parsing, the help format.

Imports nothing heavy at module level (the `hf-qwen3-deepstack` dispatcher imports it for
`--help`); torch is imported only when a dtype is parsed.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

LOG_PREFIX = "[hf-qwen3-deepstack]"

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}

_SIZE_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
               "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


def log_prefix(tool: str = "") -> str:
    """`[hf-qwen3-deepstack]`, or `[hf-qwen3-deepstack demo]` for one tool's lines."""
    return f"[hf-qwen3-deepstack {tool}]" if tool else LOG_PREFIX


def parse_size(size: str | int) -> int:
    """Bytes from '5GB' (10**9 units, as transformers' max_shard_size), '2GiB' (2**30 units),
    '500KB', '40M', '1.5GB' or a plain byte count. Raises ValueError saying what is accepted."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*((?:[KMGT]I?)?)B?\s*", str(size), flags=re.IGNORECASE)
        if not m:
            raise ValueError(f"invalid size {size!r}; use e.g. 5GB, 500MB, 2GiB or a byte count")
        value = int(float(m[1]) * _SIZE_UNITS[m[2].upper()])
    if value <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return value


def format_size(n: int) -> str:
    """'812 B', '1.50 MB', '61.07 GB' (10**3 units)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{n} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{value:.2f} TB"


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """torch dtype from 'float32' / 'bfloat16' / 'float16' (or fp32, bf16, fp16, half, torch.X);
    None for 'auto' (the caller's default). Raises ValueError listing the choices."""
    import torch

    if name is None or name == "auto":
        return None
    if isinstance(name, torch.dtype):
        name = str(name)
    key = str(name).removeprefix("torch.")
    key = DTYPE_ALIASES.get(key, key)
    if key not in DTYPE_CHOICES[1:]:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPE_CHOICES)}")
    return getattr(torch, key)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Descriptions printed as written; every optional option's help ends with its default, unless
    the help already states it in words ('default: ...'), as it must for a default of None."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if "default" in help_text.lower() or action.required or action.default is None:
            return help_text
        return super()._get_help_string(action)


# --- typed option dataclasses <-> command-line flags -------------------------------------------------
def option(default, help: str):
    """A dataclass field that is also a `--flag` (see `add_option_arguments`)."""
    import dataclasses

    return dataclasses.field(default=default, metadata={"help": help})


def add_option_arguments(group, options_class, *, required: tuple[str, ...] = (), hidden: tuple[str, ...] = ()) -> None:
    """One `--name` per field of `options_class` (bool fields are switches); the help shows the default.
    `hidden` fields are still accepted but left out of --help."""
    import argparse
    import dataclasses

    for f in dataclasses.fields(options_class):
        flag = "--" + f.name.replace("_", "-")
        help_text = argparse.SUPPRESS if f.name in hidden else f.metadata["help"]
        if f.type == "bool":
            group.add_argument(flag, action="store_true", help=help_text)
            continue
        kind = {"int": int, "float": float}.get(f.type, str)
        shown = "" if f.default is None or f.name in hidden else " (default: %(default)s)"
        group.add_argument(flag, type=kind, default=f.default, required=f.name in required, help=help_text + shown)


def options_from_args(options_class, args: argparse.Namespace):
    import dataclasses

    return options_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options_class)})


def options_argv(options) -> list[str]:
    """The flags that reproduce `options` (a dataclass made of `option` fields)."""
    import dataclasses

    out: list[str] = []
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            out += [flag] if value else []
        elif value is not None:
            out += [flag, str(value)]
    return out
