"""Waiting for torch.distributed works with a deadline, identically on gloo and NCCL.

gloo point-to-point works cannot be polled (`is_completed()` stays False until `wait()`), and
`wait(timeout=...)` on gloo closes the connection when it expires. So a daemon thread blocks on
the works in submission order and callers wait on an Event with their own deadline. An expired
deadline leaves the work posted: waiting again later picks up where it was, which is what makes
timeouts resumable. CUDA (NCCL) works are polled with `is_completed()` (complete on the GPU).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import torch


class Pending:
    """One posted work; `event` is set once it completed (or failed: `error`)."""

    __slots__ = ("work", "keep", "cuda", "event", "error")

    def __init__(self, work, keep: torch.Tensor | None):
        self.work = work
        self.keep = keep  # the tensor the work reads or writes, alive until it completes
        self.cuda = keep is not None and keep.is_cuda
        self.event = threading.Event()
        self.error: BaseException | None = None

    def done(self) -> bool:
        return self.event.is_set()


def block_on(work, cuda: bool) -> None:
    if cuda:
        while not work.is_completed():
            time.sleep(2e-5)
    work.wait()


class Waiter:
    """A daemon thread completing works in submission order. It notifies `cond` after each batch,
    and calls `on_error(exc)` when a work fails."""

    def __init__(self, name: str, cond: threading.Condition | None = None,
                 on_error: Callable[[BaseException], None] | None = None):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._cond = cond
        self._on_error = on_error
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, items: list[tuple]) -> list[Pending]:
        """Hand over posted works `(work, tensor)` as one batch (one wake-up of the thread)."""
        ps = [Pending(w, t) for w, t in items]
        self._q.put(ps)
        return ps

    def stop(self, timeout: float | None = None) -> None:
        """Finish the works submitted, then end; wait up to `timeout` s for that (a process group
        must not be destroyed while a work is being waited on)."""
        self._q.put(None)
        if timeout is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while (batch := self._q.get()) is not None:
            for p in batch:
                try:
                    block_on(p.work, p.cuda)
                except BaseException as e:  # noqa: BLE001 - reported to whoever waits
                    p.error = e
                    if self._on_error is not None:
                        self._on_error(e)
                p.keep = None
                p.event.set()
                if p.error is not None:
                    self._notify()
            self._notify()

    def _notify(self) -> None:
        if self._cond is not None:
            with self._cond:
                self._cond.notify_all()


def remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def settled(pendings: list[Pending], deadline: float) -> bool:
    """True once all completed (or failed) before `deadline`, False on expiry."""
    return all(p.event.wait(remaining(deadline)) for p in pendings)

