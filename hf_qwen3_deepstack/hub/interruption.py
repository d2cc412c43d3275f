"""SIGINT and SIGTERM during a split or push: raised as `Interrupted` so cleanup code runs, and
held back over the few renames that must happen together.

Python runs a signal handler between two bytecodes of the main thread, possibly well after the
signal arrived; so holding is decided inside the handler (a flag), not with the process's signal
mask. Only the main thread can install handlers; elsewhere both context managers do nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM arrived. `outputs` says what the output folders hold afterwards."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.outputs: Literal["old", "new"] | None = None  # set by the split; None: not during a split

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class _Guard:
    """Handler state: raise on the first signal, unless held (then raise when the hold ends)."""

    def __init__(self) -> None:
        self.raised = False
        self.holds = 0
        self.pending: int | None = None

    def handler(self, signum, frame) -> None:
        if self.raised:
            return  # the cleanup that the first signal started must not be cut short
        if self.holds:
            self.pending = self.pending or signum
            return
        self.raised = True
        raise Interrupted(signum)

    def release(self) -> None:
        if self.holds == 0 and self.pending is not None and not self.raised:
            self.raised = True
            raise Interrupted(self.pending)


_guards: list[_Guard] = []


@contextmanager
def signals_raise_interrupted() -> Iterator[None]:
    """Within the block the first SIGINT/SIGTERM raises `Interrupted`; later ones are ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    guard = _Guard()
    previous = {sig: signal.signal(sig, guard.handler) for sig in HANDLED}
    _guards.append(guard)
    try:
        yield
    finally:
        _guards.remove(guard)
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def signals_held() -> Iterator[None]:
    """Within `signals_raise_interrupted`: a signal arriving inside the block raises when it ends
    (unless the block raised)."""
    if not _guards or threading.current_thread() is not threading.main_thread():
        yield
        return
    guard = _guards[-1]
    guard.holds += 1
    try:
        yield
    finally:
        guard.holds -= 1
    guard.release()
