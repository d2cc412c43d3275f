"""Fault injection for tests: HF_QWEN3_DEEPSTACK_FAULT="kill:RANK:AFTER" makes global rank RANK
SIGKILL itself (no cleanup, like an OOM kill) once it has handled AFTER requests."""

from __future__ import annotations

import os
import signal

ENV = "HF_QWEN3_DEEPSTACK_FAULT"


def maybe_die(rank: int, handled: int) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    kind, r, after = spec.split(":")
    if kind == "kill" and int(r) == rank and handled >= int(after):
        os.kill(os.getpid(), signal.SIGKILL)
