"""What the runtime relies on beyond one request: misuse is a ValueError (not a hang or an abort),
several receivers share one group, and an idle receiver can time out and retry for as long as it
likes, then still gets the next request and the sender's goodbye."""

import threading
import time

import pytest
from _dist import assert_same, random_output, run_ranks


def _second_live_object(rank: int):
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    make = (lambda **kw: EncoderOutputSender(1, timeout=10, **kw)) if rank == 0 else (
        lambda **kw: EncoderOutputReceiver(0, capacity_tokens=8, timeout=10, **kw))
    first = make()
    messages = []
    try:
        make()
    except ValueError as e:
        messages.append(str(e))
    other_tag = make(tag=200)  # another tag is another channel
    if rank == 1:
        try:  # a receiver listing the same peer twice
            EncoderOutputReceiver([0, 0], capacity_tokens=8, tag=300)
        except ValueError as e:
            messages.append(str(e))
    out = random_output(1, 1, 12, 3)
    if rank == 0:
        first.send(0, out)
    else:
        rid, got = first.recv()
        assert rid == 0
        assert_same(got, out)
    first.close()
    other_tag.close()
    again = make()  # close() released the pair
    if rank == 0:
        again.send(1, out)
    else:
        assert again.recv()[0] == 1
    again.close()
    return messages


def test_a_second_live_sender_or_receiver_on_one_pair_raises_and_close_releases_it():
    sender_msgs, receiver_msgs = run_ranks(_second_live_object, timeout=60)
    assert len(sender_msgs) == 1 and len(receiver_msgs) == 2
    for m in sender_msgs + receiver_msgs:
        assert "already exists for peer rank" in m and "close() the first" in m, m


def _receivers_on_one_group(rank: int):
    """Rank 0 has one receiver per encoder (ranks 1, 2, 3), all on WORLD, each in its own thread."""
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender, PeerClosed

    n = 12
    if rank > 0:
        tx = EncoderOutputSender(0, timeout=30)
        handles = [tx.isend(i, random_output(100 * rank + i, 1, 5 + 7 * i, i, hidden=16)) for i in range(n)]
        for h in handles:
            h.wait()
        tx.close()
        return None
    receivers = {peer: EncoderOutputReceiver(peer, capacity_tokens=8, timeout=30) for peer in (1, 2, 3)}
    got, errors = {}, []

    def receive(peer, rx):
        try:
            while True:
                try:
                    rid, out = rx.recv(timeout=0.5)
                except PeerClosed:
                    return
                except Exception as e:  # noqa: BLE001
                    if type(e).__name__ == "TransferTimeout":
                        continue
                    raise
                assert_same(out, random_output(100 * peer + rid, 1, 5 + 7 * rid, rid, hidden=16))
                got.setdefault(peer, []).append(rid)
        except BaseException as e:  # noqa: BLE001
            errors.append(f"{peer}: {e!r}")

    threads = [threading.Thread(target=receive, args=item) for item in receivers.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for rx in receivers.values():
        rx.close()
    assert not errors, errors
    return got


def test_receivers_for_different_peers_share_one_group_from_their_own_threads():
    got = run_ranks(_receivers_on_one_group, world_size=4, timeout=120)[0]
    assert got == {peer: list(range(12)) for peer in (1, 2, 3)}


def _idle_receiver(rank: int):
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender, PeerClosed, TransferTimeout

    out = random_output(3, 2, 30, 20, hidden=32)
    if rank == 0:
        time.sleep(2.0)  # idle: nothing to send for a while
        tx = EncoderOutputSender(1, timeout=20)
        tx.send(7, out)
        time.sleep(1.0)  # idle again, then goodbye
        t0 = time.time()
        tx.close()
        return t0, time.time() - t0
    rx = EncoderOutputReceiver(0, capacity_tokens=16, timeout=20)
    threads = []
    timeouts, pending = 0, set()
    while True:
        try:
            rid, got = rx.recv(timeout=0.2)
            break
        except TransferTimeout as e:
            if e.request_id == -1:  # idle (else the request began and recv() resumes it)
                assert e.offset == 0 and rx.interrupted is None
                timeouts += 1
                pending.add(id(rx._channels[0].header))  # the same receive stays posted
                threads.append(threading.active_count())
    assert rid == 7
    assert_same(got, out)
    closed_at = None
    while closed_at is None:
        try:
            rx.recv(timeout=0.2)
            raise AssertionError("a request after the last one")
        except TransferTimeout:
            timeouts += 1
        except PeerClosed:
            closed_at = time.time()
    rx.close()
    return timeouts, len(pending), len(set(threads)), closed_at


def test_an_idle_receiver_retries_timeouts_then_gets_the_request_and_the_goodbye():
    (close_called, close_s), (timeouts, pending, thread_counts, closed_at) = run_ranks(_idle_receiver, timeout=60)
    assert timeouts >= 10  # ~2 s of 0.2 s timeouts before, ~1 s after
    assert pending == 1 and thread_counts == 1  # no receive re-posted, no thread added
    assert closed_at - close_called < 0.15  # the sender's BYE ends the wait at once (same host's clock)
    assert close_s < 5


@pytest.mark.parametrize("stage", ["first", "mid"])
def test_a_receiver_rejecting_a_request_stays_usable(stage):
    """(the hostile-sender test covers every field; this one the plain expectation mismatch)"""
    results = run_ranks(_reject_then_deliver, args=(stage,), timeout=60)
    assert results[1] == "hidden_size"


def _reject_then_deliver(rank: int, stage: str):
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender, HeaderMismatch

    bad = random_output(1, 1, 40, 10, hidden=8 if stage == "first" else 16)
    good = random_output(2, 1, 40, 10, hidden=16)
    if rank == 0:
        tx = EncoderOutputSender(1, timeout=20)
        if stage == "mid":
            from hf_qwen3_deepstack.transfer.chunking import SendPlan

            header = SendPlan.header

            def wrong(self, request_id, offset, capacity):
                h = header(self, request_id, offset, capacity)
                if request_id == 0 and offset:
                    h.hidden_size = 15
                return h

            SendPlan.header = wrong
        with pytest.raises(HeaderMismatch):
            tx.send(0, bad)
        tx.send(1, good)
        tx.close()
        return None
    rx = EncoderOutputReceiver(0, capacity_tokens=16, timeout=20, hidden_size=16)
    try:
        rx.recv()
        raise AssertionError("no HeaderMismatch")
    except HeaderMismatch as e:
        field = e.field
    rid, got = rx.recv()
    assert rid == 1
    assert_same(got, good)
    rx.close()
    return field
