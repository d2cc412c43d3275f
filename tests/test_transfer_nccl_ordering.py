"""The protocol under NCCL's ordering rules, emulated on gloo (CI has no GPU).

NCCL ignores tags and runs every send and receive between two ranks one after another on one
stream: a receive holds up everything posted after it until its data arrives, a send until its
receive is posted. A CUDA channel's chunk data travels that way (headers and control messages go
over the group's CPU backend). `_OrderedLane` gives a `PeerLink` the same rules for the chosen
tags, on gloo: one message at a time in posting order, all on one tag, each waited for before the
next is posted (gloo sends only into a posted receive, so a send waits for its receive as on
NCCL). Like NCCL without eager initialization, the first of these messages on each side blocks
its caller until the peer's first one (NCCL creates the pair's communicator then, exchanging its
id through the store). Tested like CUDA receivers run: a pull sent before its rows receive is posted.
"""

from __future__ import annotations

import datetime
import queue
import threading
import time

import pytest
import torch
from _dist import assert_same, random_output, run_ranks

CAP = 8
TAG = 100  # the transfer's default tag base: control +1, data +2, headers +3
DATA, ALL = (TAG + 2,), (TAG + 1, TAG + 2, TAG + 3)
ONE_TAG = 999


class _Op:
    """A queued message, as a `Work`: `wait()` / `is_completed()`."""

    def __init__(self, post, tensor):
        self.post, self.tensor = post, tensor
        self.done = threading.Event()
        self.error: BaseException | None = None

    def wait(self, timeout=None) -> bool:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return True

    def is_completed(self) -> bool:
        return self.done.is_set()


def _ordered_lane(tags: tuple[int, ...]):
    from hf_qwen3_deepstack.transfer.link import PeerLink

    class _OrderedLane(PeerLink):
        def __init__(self, peer, group=None):
            super().__init__(peer, group)
            self._ops: queue.SimpleQueue = queue.SimpleQueue()
            self._connected = False
            threading.Thread(target=self._run, daemon=True).start()

        def isend(self, tensor, tag):
            return self._queue(super().isend, tensor) if tag in tags else super().isend(tensor, tag)

        def irecv(self, tensor, tag):
            return self._queue(super().irecv, tensor) if tag in tags else super().irecv(tensor, tag)

        def _queue(self, post, tensor):
            if not self._connected:
                self._connect()
            op = _Op(post, tensor)
            self._ops.put(op)
            return op

        def _connect(self):
            import torch.distributed as dist

            store, me = dist.distributed_c10d._get_default_store(), dist.get_rank()
            store.set(f"lane/{me}->{self.peer}", "1")
            try:
                store.wait([f"lane/{self.peer}->{me}"], datetime.timedelta(seconds=10))
            except Exception as e:  # noqa: BLE001
                raise RuntimeError(f"rank {me}: rank {self.peer} never began its data messages") from e
            self._connected = True

        def _run(self):
            while True:
                op = self._ops.get()
                try:
                    op.post(op.tensor, ONE_TAG).wait()
                except BaseException as e:  # noqa: BLE001 - reported by the op's wait()
                    op.error = e
                op.done.set()

    return _OrderedLane


def _use_ordered_lane(tags: tuple[int, ...]) -> None:
    import hf_qwen3_deepstack.transfer.receiver as receiver_module
    import hf_qwen3_deepstack.transfer.sender as sender_module

    sender_module.PeerLink = receiver_module.PeerLink = _ordered_lane(tags)


def _receiver(peers, **kw):
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver

    rx = EncoderOutputReceiver(peers, capacity_tokens=CAP, **kw)
    rx._ask_first = True  # as a CUDA receiver does
    return rx


# (batch, seq, visual tokens): many chunks, text only, exactly one chunk, one chunk + 1 token, 1 row
SHAPES = [(2, 20, 25), (1, 8, 0), (1, CAP, CAP), (1, CAP + 1, 3), (2, 6, 1), (1, 64, 40)]


def _requests(rank):
    return [(100 * rank + i, random_output(10 * rank + i, *shape, dtype=torch.bfloat16))
            for i, shape in enumerate(SHAPES)]


def _many_requests_from_two_senders(rank):
    _use_ordered_lane(DATA)
    from hf_qwen3_deepstack.transfer import EncoderOutputSender

    if rank in (1, 2):
        tx = EncoderOutputSender(0, timeout=30, max_in_flight=4)
        handles = [tx.isend(rid, out) for rid, out in _requests(rank)]  # several in flight
        for h in handles:
            h.wait()
        tx.close()
        return tx.stats.payload_bytes_sent == sum(out.nbytes() for _, out in _requests(rank))
    rx = _receiver([1, 2], timeout=30)
    want = {rid: out for r in (1, 2) for rid, out in _requests(r)}
    order = {1: [], 2: []}
    for _ in range(len(want)):
        rid, got = rx.recv()
        assert_same(got, want.pop(rid), f"request {rid}")
        order[rx.last_peer].append(rid)
    rx.close()
    return order


def test_requests_arrive_bit_exact_when_data_runs_in_posting_order():
    """Two senders, several isends in flight each, rows messages on a lane with NCCL's rules: all
    arrive bit-identical, in order per sender, nothing sent twice."""
    order, exact1, exact2 = run_ranks(_many_requests_from_two_senders, world_size=3, timeout=120)
    assert order == {1: [100 + i for i in range(len(SHAPES))], 2: [200 + i for i in range(len(SHAPES))]}
    assert exact1 and exact2


def _resumes(rank):
    _use_ordered_lane(DATA)
    from hf_qwen3_deepstack.transfer import EncoderOutputSender, TransferTimeout

    want = random_output(3, 2, 20, 25, dtype=torch.bfloat16)  # 5 chunks of 8 tokens
    if rank == 0:
        sent = []

        def on_chunk(rid, offset, count):
            sent.append((rid, offset))
            if (rid, offset) == (2, 16):  # the receiver times out waiting for this chunk's data
                time.sleep(1.5)

        tx = EncoderOutputSender(1, timeout=30, on_chunk=on_chunk)
        tx.send(1, want)
        tx.send(2, want)
        tx.close()
        return sent, tx.stats.payload_bytes_sent == 2 * want.nbytes()
    rx = _receiver(0, timeout=30)
    kept = []
    try:
        for chunk in rx.recv_chunks():
            if chunk.chunk_index == 2:
                raise ValueError("consumer failed on chunk 2")
            kept.append(chunk.visual_embeds.clone())
    except ValueError:
        pass
    kept += [c.visual_embeds.clone() for c in rx.resume(1)]  # chunk 2 again, from staging
    assert torch.equal(torch.cat(kept), want.visual_embeds)
    timeouts = []
    while True:  # chunk 2's data is held back 1.5 s: recv() times out there, then resumes it
        try:
            _, got = rx.recv(timeout=0.5)
            break
        except TransferTimeout as e:
            timeouts.append((e.request_id, e.offset))
    assert (2, 16) in timeouts and set(timeouts) <= {(2, 0), (2, 8), (2, 16)}, timeouts
    assert_same(got, want, "request 2")  # the data receive stayed posted: the chunk was not asked for again
    rx.close()
    return None


def test_resumes_keep_both_ends_in_step_when_data_runs_in_posting_order():
    """A consumer that raised (its chunk is yielded again from staging) and a timeout (the receive
    stays posted) keep the rows messages matched one to one under NCCL's rules."""
    (sent, exact), _ = run_ranks(_resumes, timeout=120)
    assert sent == [(rid, o) for rid in (1, 2) for o in range(0, 40, CAP)] and exact


def _control_on_the_data_stream(rank):
    _use_ordered_lane(ALL)
    from hf_qwen3_deepstack.transfer import EncoderOutputSender, TransferTimeout

    if rank == 0:
        EncoderOutputSender(1, timeout=3).isend(1, random_output(1, 1, 20, 5))
        time.sleep(4)
        return None
    with pytest.raises(TransferTimeout):
        _receiver(0, timeout=2).recv()
    return "timed out"


def test_the_emulation_catches_control_messages_queued_behind_data():
    """The lane is strict enough to matter: with headers and control messages on it too (as when
    every message of a CUDA channel went over NCCL), the first pull never gets an answer."""
    _, outcome = run_ranks(_control_on_the_data_stream, timeout=60)
    assert outcome == "timed out"
