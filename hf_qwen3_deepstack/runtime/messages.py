"""Dispatch messages between ranks: UTF-8 JSON objects on the gloo `ctrl` group, never pickles.

A message is a fixed int64 header `[MAGIC, byte length]` on `HEADER_TAG`, then the JSON bytes on
`BODY_TAG` from the same sender. Each rank has one reader thread (`Mailbox`) that receives from any
source, checks the header before allocating, parses, and queues `(sender rank, message)`. Sends
from several threads of one process are serialised, so a header and its body are never
interleaved with another message's.

Kinds (every message has "kind"):
- leader -> encoder: `assign` {index, lm, request} (encode this request, send it to rank `lm`);
- leader -> language rank: `expect` {index, id, params, stream} (its parameters; its EncoderOutput
  comes through the transfer, whose header names the request), `drop` {index} (encoding failed),
  `cancel` {index} (the client is gone);
- encoder -> leader: `encoded` {items: [{index, encode_s, sent_at, bytes}], cache_hits, cache_misses},
  `failed` {index, error, status};
- language rank -> leader: `tokens` {index, token_ids} (streamed requests, each round), `result` {result};
- leader -> all: `stop`; rank -> leader: `stopped` {stats}.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any

import torch
import torch.distributed as dist

MAGIC = 0x51_33_56_4C_4D_53_47_31  # "Q3VLMSG1"
HEADER_TAG, BODY_TAG = 71, 72
MAX_BYTES = 1 << 30  # a request may carry base64 images; more than this is refused before allocating
KINDS = {"assign", "expect", "drop", "cancel", "tokens", "encoded", "failed", "result", "stop", "stopped"}

_send_lock = threading.Lock()


def send(msg: dict[str, Any], dst: int, group) -> None:
    data = json.dumps(msg, ensure_ascii=False).encode("utf-8")
    header = torch.tensor([MAGIC, len(data)], dtype=torch.int64)
    with _send_lock:
        dist.send(header, dst=dst, group=group, tag=HEADER_TAG)
        dist.send(torch.frombuffer(bytearray(data), dtype=torch.uint8), dst=dst, group=group, tag=BODY_TAG)


def recv_any(group) -> tuple[int, dict[str, Any]]:
    header = torch.empty(2, dtype=torch.int64)
    src = dist.recv(header, src=None, group=group, tag=HEADER_TAG)
    magic, size = (int(v) for v in header)
    if magic != MAGIC or not 0 < size <= MAX_BYTES:
        raise RuntimeError(f"corrupt dispatch message header from rank {src}: magic {magic:#x}, "
                           f"{size} bytes (expected {MAGIC:#x} and 1..{MAX_BYTES})")
    body = torch.empty(size, dtype=torch.uint8)
    dist.recv(body, src=src, group=group, tag=BODY_TAG)
    try:
        msg = json.loads(body.numpy().tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RuntimeError(f"undecodable dispatch message from rank {src}: {e}") from None
    if not isinstance(msg, dict) or msg.get("kind") not in KINDS:
        raise RuntimeError(f"unknown dispatch message from rank {src}: kind {msg.get('kind') if isinstance(msg, dict) else msg!r}")
    return src, msg


class Mailbox:
    """The rank's reader thread: queues `("msg", sender, message)` for every message; ends after
    `stop` (others) or once every expected `stopped` arrived (leader). A receive error (a dead
    peer) is queued as `("error", text)`."""

    def __init__(self, group, events: queue.Queue, *, stopped_expected: int = 0):
        self.group = group
        self.events = events
        self._stopped_expected = stopped_expected
        self._thread = threading.Thread(target=self._run, name="mailbox", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stopped = 0
        try:
            while True:
                src, msg = recv_any(self.group)
                self.events.put(("msg", src, msg))
                if msg["kind"] == "stop":
                    return
                if msg["kind"] == "stopped":
                    stopped += 1
                    if stopped >= self._stopped_expected:
                        return
        except BaseException as e:  # a dead peer: the owner decides what to do
            self.events.put(("error", f"control channel failed (a peer rank died?): {type(e).__name__}: {e}"))

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
