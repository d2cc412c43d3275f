"""Heartbeats through the job's c10d store: a rank that stops making progress ends the job.

Every rank runs one thread that bumps its own counter in the store every `interval` seconds and
watches the others' counters. A counter that has not moved for `timeout` seconds (on the watcher's
own clock, so clocks of different nodes need not agree) means that rank is stopped, deadlocked in
the interpreter, or on a node that is gone: the watcher prints which rank and exits, and the
launcher stops the rest. A rank that is merely busy (a long prefill, loading a large checkpoint)
keeps beating: torch releases the GIL in its kernels and in file I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

KEY = "hf_qwen3_deepstack/heartbeat/{}"


class Heartbeat:
    def __init__(self, store, rank: int, world_size: int, timeout_s: float,
                 on_silent: Callable[[int, float], None]):
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.interval = min(2.0, max(0.1, timeout_s / 10))
        self.on_silent = on_silent  # (rank, seconds silent); expected not to return
        self._seen: dict[int, tuple[int, float]] = {}  # rank -> (counter, when it last moved)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        self.store.add(KEY.format(self.rank), 1)

    def silent_peers(self, longer_than_s: float) -> dict[int, float]:
        """Peers whose counter has not moved for more than `longer_than_s`: rank -> seconds silent."""
        now = time.monotonic()
        return {peer: now - moved for peer, (_, moved) in list(self._seen.items()) if now - moved > longer_than_s}

    def _run(self) -> None:
        seen = self._seen
        while not self._stop.wait(self.interval):
            self._beat()
            now = time.monotonic()
            for peer in range(self.world_size):
                if peer == self.rank:
                    continue
                count = self.store.add(KEY.format(peer), 0)
                last = seen.get(peer)
                if last is None or count != last[0]:
                    seen[peer] = (count, now)
                elif now - last[1] > self.timeout_s and not self._stop.is_set():
                    self.on_silent(peer, now - last[1])
                    return
