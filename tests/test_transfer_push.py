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


def _fails_then_closes(tx, handle):
    """Sender side: `handle` must fail with PeerClosed (the receiver closed first); then time
    `tx.close()`. Returns (close seconds, chunks sent)."""
    from hf_qwen3_deepstack.transfer import PeerClosed

    try:
        handle.wait()
        raise AssertionError(f"request {handle.request_id} completed although the receiver closed")
    except PeerClosed:
        pass
    t0 = time.monotonic()
    tx.close()
    return time.monotonic() - t0, tx.stats.chunks_sent


def _close_mid_request(rank, push):
    """The receiver takes chunk 0 of 6, then closes; the sender must fail the request with
    PeerClosed and close promptly (nothing it pushed stays pending)."""
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    out = random_output(5, 1, 6 * CAP, 50, hidden=64)
    if rank == 0:
        tx = EncoderOutputSender(1, timeout=10)
        return _fails_then_closes(tx, tx.isend(5, out))
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
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    outs = [random_output(6, 1, 2 * CAP, 10, hidden=64), random_output(7, 1, 5 * CAP, 40, hidden=64)]
    if rank == 0:
        tx = EncoderOutputSender(1, timeout=10)
        handles = [tx.isend(i, out) for i, out in enumerate(outs)]
        handles[0].wait()
        return _fails_then_closes(tx, handles[1])
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


def _mixed_request():
    """64 tokens in 4 chunks of 16: text only / 16 visual rows / 2 visual rows / text only."""
    from _dist import IMAGE_ID

    from hf_qwen3_deepstack.encoder_output import EncoderOutput

    base = random_output(8, 1, 64, 0, hidden=32)
    ids = base.input_ids.clone()
    ids[0, 16:32] = IMAGE_ID
    ids[0, 40:42] = IMAGE_ID
    g = torch.Generator().manual_seed(9)
    return EncoderOutput(input_ids=ids, position_ids=base.position_ids, rope_deltas=base.rope_deltas,
                         visual_embeds=torch.randn(18, 32, generator=g),
                         deepstack_visual_embeds=torch.randn(3, 18, 32, generator=g),
                         attention_mask=base.attention_mask, image_token_id=IMAGE_ID, video_token_id=None)


def _large_chunks_pulled(rank, streaming):
    """With a 2000-byte push limit, chunk 1 (16 rows x 4 x 32 fp32 = 8 KB) is sent when pulled, and
    so is every chunk after it (their data must reach gloo in the order it is received)."""
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    want = _mixed_request()
    if rank == 0:
        from hf_qwen3_deepstack.transfer import sender

        sender.PUSH_LIMIT = 2000
        tx = EncoderOutputSender(1, timeout=20)
        tx.send(0, want)
        tx.send(1, want)
        tx.close()
        return tx.stats.payload_bytes_resent
    rx = EncoderOutputReceiver(0, capacity_tokens=CAP, timeout=20)
    controls = []
    for rid in (0, 1):
        before = rx.ctrl_bytes_sent
        if streaming:
            chunks = [(c.input_ids.clone(), c.visual_embeds.clone(), c.deepstack_visual_embeds.clone())
                      for c in rx.recv_chunks()]
            assert torch.equal(torch.cat([c[0] for c in chunks]), want.input_ids.reshape(-1))
            assert torch.equal(torch.cat([c[1] for c in chunks]), want.visual_embeds)
            assert torch.equal(torch.cat([c[2] for c in chunks], 1), want.deepstack_visual_embeds)
        else:
            got_id, got = rx.recv()
            assert got_id == rid
            assert_same(got, want)
        controls.append((rx.ctrl_bytes_sent - before) // 128)
    rx.close()
    return controls


@pytest.mark.parametrize("streaming", [False, True], ids=["recv", "recv_chunks"])
def test_pushed_request_pulls_its_large_chunks_and_every_one_after(streaming):
    resent, controls = run_ranks(_large_chunks_pulled, args=(streaming,), timeout=90)
    assert resent == 0
    # per request: a pull each for chunks 1, 2 and 3 (the last one also asks for the next request),
    # and the final acknowledgement; chunk 0 was pushed (its describe was sent with the previous
    # request's last pull, or is the first control message: counted for request 0)
    assert controls == [1 + 3 + 1, 3 + 1]
