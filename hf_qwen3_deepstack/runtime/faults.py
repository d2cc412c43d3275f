"""Fault injection for tests, from HF_QWEN3_DEEPSTACK_FAULT (comma-separated):

- `kill:RANK:AFTER`: global rank RANK SIGKILLs itself (no cleanup, like an OOM kill) once it has
  handled AFTER requests;
- `delay:RANK:SECONDS`: global rank RANK sleeps SECONDS before each unit of work (an encoder's
  vision batch, a language rank's scheduling round): a rank that is slow but alive.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "HF_QWEN3_DEEPSTACK_FAULT"


def _specs(kind: str, rank: int) -> list[float]:
    out = []
    for spec in filter(None, os.environ.get(ENV, "").split(",")):
        k, r, value = spec.split(":")
        if k == kind and int(r) == rank:
            out.append(float(value))
    return out


def maybe_die(rank: int, handled: int) -> None:
    if any(handled >= after for after in _specs("kill", rank)):
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_delay(rank: int) -> None:
    for seconds in _specs("delay", rank):
        time.sleep(seconds)
