"""Push mode (gloo's default): after the first pull the sender sends every later chunk unasked.
What it pushed of a request the receiver drops (a rejected chunk header, or `close()` mid-request)
is taken off the wire, so the channel stays in step and nothing stays pending. Each test also runs
in pull mode (`push=False`, every chunk pulled: the CUDA default) for comparison."""

import time

import pytest
import torch
from _dist import assert_same, random_output, run_ranks

CAP = 16


def _bad_second_header(rank, push):
    """Rank 0's plan reports a wrong `row_offset` in chunk 1 of request 3 (its data is still the
    right size): the receiver rejects request 3 mid-way; request 4 must then arrive intact."""
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender, HeaderMismatch

    bad, good = random_output(3, 1, 64, 40, hidden=32), random_output(4, 2, 30, 25, hidden=32)
    if rank == 0:
        from hf_qwen3_deepstack.transfer import chunking

        header = chunking.SendPlan.header

        def wrong_row_offset(self, request_id, chunk_index, *args, **kwargs):
            h = header(self, request_id, chunk_index, *args, **kwargs)
            if request_id == 3 and chunk_index == 1:
                h.row_offset += 1
            return h

        chunking.SendPlan.header = wrong_row_offset
        tx = EncoderOutputSender(1, timeout=20)
        try:
            tx.send(3, bad)
            raise AssertionError("the sender was not told about the rejection")
        except HeaderMismatch as e:
            err = (e.request_id, e.field)
        tx.send(4, good)
        tx.close()
        return err
    rx = EncoderOutputReceiver(0, capacity_tokens=CAP, timeout=20, push=push)
    try:
        rx.recv()
        raise AssertionError("no HeaderMismatch")
    except HeaderMismatch as e:
        err = (e.request_id, e.field, e.args[0])
    rid, got = rx.recv()
    assert rid == 4
    assert_same(got, good)
    rx.close()
    return err


@pytest.mark.parametrize("push", [True, False], ids=["push", "pull"])
def test_a_chunk_rejected_mid_request_leaves_the_channel_in_step(push):
    sender_err, (rid, field, msg) = run_ranks(_bad_second_header, args=(push,), timeout=90)
    assert sender_err == (3, "row_offset")
    assert (rid, field) == (3, "row_offset") and f"token offset {CAP}" in msg


def _close_mid_request(rank, push):
    """The receiver takes chunk 0 of 6, then closes; the sender must fail the request with
    PeerClosed and close promptly (nothing it pushed stays pending)."""
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender, PeerClosed

    out = random_output(5, 1, 6 * CAP, 50, hidden=64)
    if rank == 0:
        tx = EncoderOutputSender(1, timeout=10)
        handle = tx.isend(5, out)
        try:
            handle.wait()
            raise AssertionError("request completed although the receiver closed")
        except PeerClosed:
            pass
        t0 = time.monotonic()
        tx.close()
        return time.monotonic() - t0, tx.stats.chunks_sent
    rx = EncoderOutputReceiver(0, capacity_tokens=CAP, timeout=10, push=push)
    chunk = next(rx.recv_chunks())
    assert chunk.token_offset == 0 and torch.equal(chunk.input_ids, out.input_ids.reshape(-1)[:CAP])
    rx.close()
    time.sleep(4)  # stay connected: a send left pending would now hold the sender's close()
    return rx.interrupted


@pytest.mark.parametrize("push", [True, False], ids=["push", "pull"])
def test_closing_mid_request_takes_pushed_chunks_off_the_wire(push):
    (close_s, chunks_sent), interrupted = run_ranks(_close_mid_request, args=(push,), timeout=90)
    assert interrupted is None
    assert chunks_sent == (6 if push else 1)  # pushed: all chunks were sent; pulled: only chunk 0
    assert close_s < 3  # a send still pending would hold close() until its 10 s deadline


def _close_with_next_request_pushed(rank, push):
    """The receiver takes request 0, then closes while request 1 (several chunks) is already on
    its way (described by the prefetch sent with request 0's last chunk): close() must take it off
    the wire, the sender fail it with PeerClosed and close promptly."""
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender, PeerClosed

    outs = [random_output(6, 1, 2 * CAP, 10, hidden=64), random_output(7, 1, 5 * CAP, 40, hidden=64)]
    if rank == 0:
        tx = EncoderOutputSender(1, timeout=10)
        handles = [tx.isend(i, out) for i, out in enumerate(outs)]
        handles[0].wait()
        try:
            handles[1].wait()
            raise AssertionError("request 1 completed although the receiver closed")
        except PeerClosed:
            pass
        t0 = time.monotonic()
        tx.close()
        return time.monotonic() - t0, tx.stats.chunks_sent
    rx = EncoderOutputReceiver(0, capacity_tokens=CAP, timeout=10, push=push)
    rid, got = rx.recv()
    assert rid == 0
    assert_same(got, outs[0])
    time.sleep(0.5)  # request 1's header (and, pushed, all of it) is sent meanwhile
    rx.close()
    time.sleep(4)  # stay connected: a send left pending would now hold the sender's close()
    return rid


@pytest.mark.parametrize("push", [True, False], ids=["push", "pull"])
def test_closing_with_the_next_request_pushed_takes_it_off_the_wire(push):
    (close_s, chunks_sent), _ = run_ranks(_close_with_next_request_pushed, args=(push,), timeout=90)
    assert chunks_sent == (2 + 5 if push else 2)  # pushed: request 1 whole; pulled: nothing of it
    assert close_s < 3  # a send still pending would hold close() until its 10 s deadline
