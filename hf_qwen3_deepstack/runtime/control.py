"""Control messages (gloo, fixed size, int64): encoder -> language rank, one per request.

Layout: [MAGIC, kind, request index, encode time in ns, error text length, sender rank, 0, 0]
followed by ERROR_TEXT_WORDS int64 words holding UTF-8 error text. Never pickled.
A PAYLOAD message is followed by an EncoderOutput on the data plane (hf_qwen3_deepstack.transfer)
from the same sender; an ERROR message is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

MAGIC = 0x51_33_56_4C_43_54_52_4C  # "Q3VLCTRL"
PAYLOAD, ERROR = 1, 2
HEADER_WORDS = 8
ERROR_TEXT_WORDS = 128  # 1 KiB of UTF-8
MESSAGE_WORDS = HEADER_WORDS + ERROR_TEXT_WORDS


@dataclass
class Control:
    kind: int
    index: int
    encode_s: float
    sender: int
    error: str | None = None


def pack(msg: Control) -> torch.Tensor:
    buf = torch.zeros(MESSAGE_WORDS, dtype=torch.int64)
    text = (msg.error or "").encode("utf-8")[: ERROR_TEXT_WORDS * 8]
    buf[:HEADER_WORDS] = torch.tensor(
        [MAGIC, msg.kind, msg.index, int(msg.encode_s * 1e9), len(text), msg.sender, 0, 0], dtype=torch.int64
    )
    if text:
        buf[HEADER_WORDS:].view(torch.uint8)[: len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    return buf


def unpack(buf: torch.Tensor) -> Control:
    h = buf[:HEADER_WORDS].tolist()
    if h[0] != MAGIC or h[1] not in (PAYLOAD, ERROR):
        raise RuntimeError(f"corrupt control message from rank {h[5]}: header {h[:3]}")
    n = max(0, min(int(h[4]), ERROR_TEXT_WORDS * 8))
    text = bytes(buf[HEADER_WORDS:].view(torch.uint8)[:n].tolist()).decode("utf-8", errors="replace") if n else None
    return Control(kind=int(h[1]), index=int(h[2]), encode_s=h[3] / 1e9, sender=int(h[5]), error=text)


def isend(msg: Control, dst: int, group) -> dist.Work:
    return dist.isend(pack(msg), dst=dst, group=group)


def recv_any(group) -> Control:
    """Receive the next control message from whichever encoder sends first."""
    buf = torch.empty(MESSAGE_WORDS, dtype=torch.int64)
    dist.recv(buf, src=None, group=group)
    return unpack(buf)


# --- --serial (latency measurements): language rank -> encoder "request finished" -----------------
def send_finished(index: int, dst: int, group) -> None:
    dist.send(torch.tensor([MAGIC, index], dtype=torch.int64), dst=dst, group=group)


def recv_finished(src: int, group) -> int:
    buf = torch.empty(2, dtype=torch.int64)
    dist.recv(buf, src=src, group=group)
    if int(buf[0]) != MAGIC:
        raise RuntimeError(f"corrupt 'finished' message from rank {src}")
    return int(buf[1])


# --- result lines: non-leader language rank -> leader (gloo `results` group) ------------------
def send_bytes(data: bytes, dst: int, group) -> None:
    dist.send(torch.tensor([len(data)], dtype=torch.int64), dst=dst, group=group)
    if data:
        dist.send(torch.frombuffer(bytearray(data), dtype=torch.uint8), dst=dst, group=group)


def recv_bytes_any(group) -> tuple[int, bytes]:
    n = torch.empty(1, dtype=torch.int64)
    src = dist.recv(n, src=None, group=group)
    size = int(n.item())
    if size == 0:
        return src, b""
    buf = torch.empty(size, dtype=torch.uint8)
    dist.recv(buf, src=src, group=group)
    return src, bytes(buf.numpy().tobytes())
