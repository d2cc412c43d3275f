"""Data plane adapter: EncoderOutput payloads between encoder ranks and language ranks, through
`hf_qwen3_deepstack.transfer` (pull-based, resumable chunks of `capacity_tokens`).

The transfer's own header names each request, so nothing else announces a payload: a language
rank runs one receiving thread per encoder, which queues every `(index, EncoderOutput)` as it
lands while the decode loop goes on. Idle waits time out and retry (a slow or idle sender never
stalls the batch); a sender's `close()` ends its thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hf_qwen3_deepstack.encoder_output import EncoderOutput
from hf_qwen3_deepstack.transfer import (
    EncoderOutputReceiver,
    EncoderOutputSender,
    PeerClosed,
    SendHandle,
    TransferTimeout,
)

POLL_S = 5.0  # an idle receive times out and is posted again this often


class Outbox:
    """Encoder side: one sender per language peer (each language rank has a receiver for each
    encoder, so every pair says goodbye at `close()`), non-blocking sends."""

    def __init__(self, peers: list[int], group_for: Callable[[int], Any], timeout_s: float):
        self._senders = {peer: EncoderOutputSender(peer, group_for(peer), timeout=timeout_s) for peer in peers}
        self._handles: list[SendHandle] = []

    def isend(self, peer: int, index: int, out: EncoderOutput) -> SendHandle:
        handle = self._senders[peer].isend(index, out)
        self._handles.append(handle)
        return handle

    def reap(self) -> None:
        """Forget acknowledged sends; raise the error of a failed one (the data plane is broken)."""
        for h in self._handles:
            if h.done():
                h.wait(0)
        self._handles = [h for h in self._handles if not h.done()]

    def close(self) -> None:
        for sender in self._senders.values():
            sender.close()


@dataclass
class Arrival:
    index: int
    output: EncoderOutput
    peer: int
    received_at: float  # wall clock


class Inbox:
    """Language side: one receiver and one receiving thread per encoder peer."""

    def __init__(self, peers: list[int], group_for: Callable[[int], Any], capacity_tokens: int,
                 device: torch.device, timeout_s: float, events: queue.Queue):
        self.events = events  # receives ("data", Arrival) and ("error", text)
        self._receivers = {
            peer: EncoderOutputReceiver(peer, group_for(peer), capacity_tokens=capacity_tokens, device=device,
                                        timeout=timeout_s)
            for peer in peers
        }
        self._threads = [threading.Thread(target=self._receive, args=(peer, rx), name=f"inbox-{peer}", daemon=True)
                         for peer, rx in self._receivers.items()]
        for t in self._threads:
            t.start()

    def _receive(self, peer: int, rx: EncoderOutputReceiver) -> None:
        while True:
            try:
                index, out = rx.recv(timeout=POLL_S)
            except TransferTimeout:  # idle, or a request stalled part-way: the next recv() resumes it
                continue
            except PeerClosed:
                return
            except BaseException as e:  # broken data plane: the decode loop ends the job
                self.events.put(("error", f"receiving from rank {peer} failed: {type(e).__name__}: {e}"))
                return
            self.events.put(("data", Arrival(index, out, peer, time.time())))

    def close(self) -> None:
        """Once every encoder is closing its sender: each thread ends on its sender's goodbye."""
        for t in self._threads:
            t.join()
        for rx in self._receivers.values():
            rx.close()
