"""Waiting for torch.distributed works with a deadline, identically on gloo and NCCL.

gloo point-to-point works cannot be polled (`is_completed()` stays False until `wait()`), and
`wait(timeout=...)` on gloo closes the connection when it expires. So each channel owns one
daemon thread that blocks on its works in FIFO order; callers wait on an Event with their own
deadline. An expired deadline leaves the work posted: waiting again later picks up where it was,
which is what makes timeouts resumable. CUDA (NCCL) works are polled with `is_completed()`:
a work counts as CUDA when the tensor it reads or writes (`keep`, which every submitted item
names) is on a CUDA device, so one thread can complete gloo and NCCL works alike.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import torch


class Pending:
    """One posted work. `event` is set when it completed (or failed: `error`)."""

    __slots__ = ("work", "keep", "cuda", "event", "error", "nbytes")

    def __init__(self, work, keep: torch.Tensor | None = None, nbytes: int = 0):
        self.bind(work, keep, nbytes)
        self.event = threading.Event()
        self.error: BaseException | None = None

    def bind(self, work, keep: torch.Tensor | None, nbytes: int) -> None:
        self.work = work
        self.keep = keep  # the tensor the work reads/writes, kept alive until completion
        self.cuda = keep is not None and keep.is_cuda  # NCCL: poll, never block in wait()
        self.nbytes = nbytes

    def done(self) -> bool:
        return self.event.is_set()


def block_on(work, cuda: bool) -> None:
    if cuda:
        while not work.is_completed():
            time.sleep(2e-5)
        work.wait()
    else:
        work.wait()


class Waiter:
    """A daemon thread completing works in submission order; notifies `cond` after each batch
    (and at once on a failure). It can also post the works itself (`submit_posting`)."""

    def __init__(self, name: str, cond: threading.Condition | None = None):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._cond = cond
        self.posted = threading.Event()  # clear while a `submit_posting` job has not posted yet
        self.posted.set()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit_many(self, items: list[tuple]) -> list[Pending]:
        """Hand over several already-posted works `(work, keep, nbytes)` in one queue item (`keep`:
        the tensor the work reads or writes): the thread is woken once (each wake-up is a GIL
        hand-off that stalls the posting thread)."""
        ps = [Pending(w, k, n) for w, k, n in items]
        self._q.put(ps)
        return ps

    def submit_posting(self, post: Callable[[], list[tuple]], count: int) -> list[Pending]:
        """Like `submit_many`, but this thread posts the works: `post()` returns the `count` items
        `(work, keep, nbytes)`. The caller goes on at once; `posted` is set once they are posted."""
        ps = [Pending(None) for _ in range(count)]
        self.posted.clear()
        self._q.put((post, ps))
        return ps

    def stop(self, timeout: float | None = None) -> None:
        """Finish the works already submitted, then end the thread; wait up to `timeout` seconds
        for that (a process group must not be destroyed while a work is being waited on)."""
        self._q.put(None)
        if timeout is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = self._q.get()
            if batch is None:
                return
            if isinstance(batch, tuple):  # (post, pendings): post the works here first
                post, batch = batch
                try:
                    for p, item in zip(batch, post(), strict=True):
                        p.bind(*item)
                except BaseException as e:  # noqa: BLE001 - reported to the waiting caller
                    for p in batch:
                        p.error = e
                        p.event.set()
                    self._notify()
                    continue
                finally:
                    self.posted.set()
            for p in batch:
                try:
                    block_on(p.work, p.cuda)
                except BaseException as e:  # noqa: BLE001 - reported to the waiting caller
                    p.error = e
                p.keep = None
                p.event.set()
                if p.error is not None:
                    self._notify()
            # one wake-up per batch: callers wait for whole batches (a chunk's data, a pull's answer)
            self._notify()

    def _notify(self) -> None:
        if self._cond is not None:
            with self._cond:
                self._cond.notify_all()


def remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def wait_all(pendings: list[Pending], deadline: float) -> bool:
    """True when all completed before `deadline` (errors are re-raised), False on expiry."""
    for p in pendings:
        if not p.event.wait(remaining(deadline)):
            return False
        if p.error is not None:
            raise p.error
    return True
