"""Data plane adapter: EncoderOutput payloads between one encoder rank and one language rank,
through `hf_qwen3_deepstack.transfer` (pull-based, resumable chunks of `capacity_tokens`).

Senders and receivers are created lazily, on the first payload for a (encoder, language) pair, on
both sides symmetrically: a pair that only ever exchanged error control messages has neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender


class Outbox:
    """Encoder side: one sender per language peer, non-blocking sends."""

    def __init__(self, group_for: Callable[[int], Any], timeout_s: float):
        self.group_for = group_for  # language peer -> the pair's data group
        self.timeout_s = timeout_s
        self._senders: dict[int, EncoderOutputSender] = {}

    def isend(self, peer: int, index: int, out):
        sender = self._senders.get(peer)
        if sender is None:
            sender = self._senders[peer] = EncoderOutputSender(peer, self.group_for(peer), timeout=self.timeout_s)
        return sender.isend(index, out)

    def close(self) -> None:
        for sender in self._senders.values():
            sender.close()


class Inbox:
    """Language side: one receiver per encoder peer (the control message says which peer is next)."""

    def __init__(self, group_for: Callable[[int], Any], capacity_tokens: int, device: torch.device, timeout_s: float):
        self.group_for = group_for  # encoder peer -> the pair's data group
        self.capacity_tokens = capacity_tokens
        self.device = device
        self.timeout_s = timeout_s
        self._receivers: dict[int, EncoderOutputReceiver] = {}

    def recv(self, peer: int):
        receiver = self._receivers.get(peer)
        if receiver is None:
            receiver = self._receivers[peer] = EncoderOutputReceiver(
                peer, self.group_for(peer), capacity_tokens=self.capacity_tokens, device=self.device,
                timeout=self.timeout_s,
            )
        return receiver.recv()

    def recycle(self, peer: int, out) -> None:
        """Hand a consumed payload's memory back to the receiver of `peer` (reused by its next recv)."""
        self._receivers[peer].recycle(out)

    def close(self) -> None:
        for receiver in self._receivers.values():
            receiver.close()
