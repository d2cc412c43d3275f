"""Graceful stop of `hf-qwen3-deepstack serve`: SIGTERM or SIGINT to the launcher drains the server.

Left to torchelastic, those signals stop every rank at once and kill them 30 s later, whatever is
still in flight. While serving, the launcher handles them itself instead: the first one is passed to
the language leader, which stops taking requests, finishes those in flight and then stops every
rank; a second one is passed on too, and the leader then stops at once. SIGHUP and SIGQUIT still
stop the job through torchelastic.
"""

from __future__ import annotations

import signal
import sys

import psutil

from hf_qwen3_deepstack.cli_values import LOG_PREFIX

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
ELASTIC_SIGNALS = "SIGHUP,SIGQUIT"  # LaunchConfig.signals_to_handle while serving: the rest are ours


class DrainOnSignal:
    def __init__(self, leader_rank: int):
        self.leader_rank = leader_rank
        self.received = 0
        self._saved_handlers: dict[int, object] = {}

    def __enter__(self) -> "DrainOnSignal":
        self._saved_handlers = {sig: signal.signal(sig, self._on_signal) for sig in DRAIN_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved_handlers.items():
            signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame) -> None:
        self.received += 1
        leader = self._leader()
        if leader is None:  # the ranks are still starting: nothing is in flight, stop them as torchelastic would
            from torch.distributed.elastic.multiprocessing.api import _terminate_process_handler

            _terminate_process_handler(sig, frame)  # raises torchelastic's SignalException
        what = "draining: finishing the requests in flight" if self.received == 1 else "stopping at once"
        print(f"{LOG_PREFIX} {signal.Signals(sig).name}: {what}", file=sys.stderr, flush=True)
        try:
            leader.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass  # it is ending anyway; torchelastic reports how

    def _leader(self) -> psutil.Process | None:
        for child in psutil.Process().children():
            try:
                if child.environ().get("RANK") == str(self.leader_rank):
                    return child
            except psutil.Error:
                continue
        return None
