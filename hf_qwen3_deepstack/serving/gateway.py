"""The bridge between the HTTP server (an asyncio loop on its own thread) and the language
leader's scheduling loop: requests go in through the leader's event queue, tokens and results
come back through each request's asyncio queue."""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hf_qwen3_deepstack.runtime.requests import Request

from .openai_schema import ChatRequest


@dataclass
class Pending:
    request: Request
    loop: asyncio.AbstractEventLoop
    updates: asyncio.Queue = field(default_factory=asyncio.Queue)  # ("tokens", [ids]) then ("result", line)


class Gateway:
    def __init__(self, events: queue.Queue):
        self.events = events  # the leader's event queue
        self.accepting = True
        self.loop_beat = time.monotonic()  # the leader's loop bumps this every round
        self.silent_ranks: Callable[[], dict[str, float]] = dict  # rank name -> seconds without a heartbeat
        self._ids = itertools.count()
        self._pending: dict[int, Pending] = {}
        self._lock = threading.Lock()

    # --- HTTP side ------------------------------------------------------------------------------------
    def submit(self, chat: ChatRequest) -> Pending:
        index = next(self._ids)
        request = Request(index, f"chatcmpl-{uuid.uuid4().hex}", messages=chat.messages, params=chat.params,
                          stream=chat.stream)
        pending = Pending(request, asyncio.get_running_loop())
        with self._lock:
            self._pending[index] = pending
        self.events.put(("submit", request))
        return pending

    def cancel(self, index: int) -> None:
        """The client went away: free its slot (its result, when it comes, is dropped)."""
        with self._lock:
            known = self._pending.pop(index, None) is not None
        if known:
            self.events.put(("cancel", index))

    def health_problem(self, within_s: float) -> str | None:
        """Why the server is unhealthy (the leader's loop stalled, or a rank silent), or None."""
        stalled = time.monotonic() - self.loop_beat
        if stalled >= within_s:
            return f"the runtime is not making progress (the scheduling loop stalled for {stalled:.0f} s)"
        silent = self.silent_ranks()
        if silent:
            return "no heartbeat from " + ", ".join(f"{who} for {s:.0f} s" for who, s in silent.items())
        return None

    # --- leader side ----------------------------------------------------------------------------------
    def tokens(self, index: int, token_ids: list[int]) -> None:
        with self._lock:
            pending = self._pending.get(index)
        if pending is not None:
            pending.loop.call_soon_threadsafe(pending.updates.put_nowait, ("tokens", token_ids))

    def result(self, index: int, line: dict[str, Any]) -> None:
        with self._lock:
            pending = self._pending.pop(index, None)
        if pending is not None:
            pending.loop.call_soon_threadsafe(pending.updates.put_nowait, ("result", line))

    @property
    def waiting_clients(self) -> int:
        with self._lock:
            return len(self._pending)
