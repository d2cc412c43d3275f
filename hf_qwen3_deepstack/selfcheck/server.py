"""Check 5, the online server: one streamed request against `hf-qwen3-deepstack serve`, once that
command exists and its extras are installed. Until then the check reports itself as skipped."""

from __future__ import annotations

import importlib.util

from .context import CheckContext
from .report import CheckResult, Status

SERVER_EXTRAS = ("fastapi", "uvicorn", "openai")  # transformers' `serving` extra


def run(ctx: CheckContext) -> list[CheckResult]:
    from hf_qwen3_deepstack.cli import COMMANDS

    if "serve" not in COMMANDS:
        return [CheckResult("server", "one streamed request", Status.SKIP,
                            "no `serve` command in this version (the online server has not landed)")]
    missing = [m for m in SERVER_EXTRAS if importlib.util.find_spec(m) is None]
    if missing:
        return [CheckResult("server", "one streamed request", Status.SKIP,
                            f"server extras not installed: {', '.join(missing)}")]
    return [CheckResult("server", "one streamed request", Status.SKIP,
                        "`serve` exists but this selfcheck has no smoke test for it yet")]
