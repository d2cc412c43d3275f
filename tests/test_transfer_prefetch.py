"""recv() prefetches what follows a chunk (PREFETCH) and acknowledges separately (ACK); recv_chunks() does not.

Fake senders play the wire protocol with raw torch.distributed messages to check the control
messages the receiver emits, in order, with their fields.
"""

import time

import torch
from _dist import assert_same, random_output, run_ranks

CTRL_TAG, DATA_TAG = 101, 102  # DEFAULT_TAG + 1 / + 2
CAP = 8
B, S, N = 2, 20, 25  # 40 tokens -> 5 chunks of 8


def _want(seed):
    return random_output(seed, B, S, N, hidden=16, levels=3, dtype=torch.bfloat16)


def _chunk_payload_bytes(want, offset, count):
    flat = want.input_ids.reshape(-1)
    rows = int(torch.isin(flat[offset : offset + count], torch.tensor([want.image_token_id, want.video_token_id])).sum())
    ints = (want.batch_size if offset == 0 else 0) + 5 * count
    return 8 * ints + rows * (1 + want.num_deepstack_levels) * want.hidden_size * 2


def _two_requests(rank, mode):
    """Rank 0 queues requests 0 and 1 at once and records, for every chunk it sends, what the
    receiver had acknowledged at that moment."""
    if rank == 0:
        from hf_qwen3_deepstack.transfer import EncoderOutputSender

        sent = []
        handles = {}

        def on_chunk(rid, offset, count):
            h0 = handles.get(0)
            sent.append((rid, offset, handles[rid].acked_offset if rid in handles else 0,
                         h0 is not None and h0.done()))

        tx = EncoderOutputSender(1, timeout=20, on_chunk=on_chunk)
        handles[0] = tx.isend(0, _want(0))
        handles[1] = tx.isend(1, _want(1))
        for h in handles.values():
            h.wait()
        acked = [handles[r].acked_offset for r in (0, 1)]
        tx.close()
        return sent, acked, tx.stats.payload_bytes_sent, tx.stats.payload_bytes_resent
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver

    rx = EncoderOutputReceiver(0, capacity_tokens=CAP, timeout=20)
    got = {}
    for _ in range(2):
        if mode == "recv":
            rid, out = rx.recv()
            assert_same(out, _want(rid), f"request {rid}")  # EncoderOutput does not cross the queue
            got[rid] = out.input_ids.reshape(-1).clone()
        else:
            chunks = [(c.request_id, c.input_ids.clone()) for c in rx.recv_chunks()]
            got[chunks[0][0]] = torch.cat([ids for _, ids in chunks])
    rx.close()
    return got


def test_recv_pulls_the_next_chunk_and_request_before_acknowledging_the_current_one():
    (sent, acked, payload_sent, resent), got = run_ranks(_two_requests, args=("recv",), timeout=60)
    # (request, offset, acknowledged offset of that request when the chunk went out, request 0 done)
    assert sent == [(0, 0, 0, False), (0, 8, 0, False), (0, 16, 8, False), (0, 24, 16, False), (0, 32, 24, False),
                    (1, 0, 0, False),  # request 1 starts while request 0's last chunk is still unacknowledged
                    (1, 8, 0, True), (1, 16, 8, True), (1, 24, 16, True), (1, 32, 24, True)]
    assert acked == [40, 40]  # the separate ACK messages completed both handles
    want = [_want(0), _want(1)]
    assert payload_sent == sum(_chunk_payload_bytes(w, o, CAP) for w in want for o in range(0, B * S, CAP))
    assert resent == 0  # prefetching never sends a byte twice
    for rid in (0, 1):
        assert torch.equal(got[rid], want[rid].input_ids.reshape(-1))


def test_recv_chunks_pulls_a_chunk_only_after_acknowledging_the_previous_one():
    (sent, acked, _, resent), got = run_ranks(_two_requests, args=("stream",), timeout=60)
    assert sent == [(0, 0, 0, False), (0, 8, 8, False), (0, 16, 16, False), (0, 24, 24, False), (0, 32, 32, False),
                    (1, 0, 0, True), (1, 8, 8, True), (1, 16, 16, True), (1, 24, 24, True), (1, 32, 32, True)]
    assert acked == [40, 40] and resent == 0
    for rid in (0, 1):
        assert torch.equal(got[rid], _want(rid).input_ids.reshape(-1))


def _recv_ctrl():
    import torch.distributed as dist

    from hf_qwen3_deepstack.transfer.protocol import CONTROL_WORDS, Control

    buf = torch.empty(CONTROL_WORDS, dtype=torch.int64)
    dist.recv(buf, src=1, tag=CTRL_TAG)
    c = Control.from_tensor(buf)
    return c.kind, c.request_id, c.offset, c.done_request_id, c.done_total


def _send_chunk(plan, rid):
    import torch.distributed as dist

    h = plan.header(rid, 0, 0, capacity=16)
    dist.send(h.to_tensor(), dst=1, tag=DATA_TAG)
    for m in plan.messages(h):
        dist.send(m, dst=1, tag=DATA_TAG)


def _payload_timeout(rank):
    """Rank 0 is a fake sender that delays request 5's data past the receiver's timeout."""
    import torch.distributed as dist

    from hf_qwen3_deepstack.transfer import PeerClosed, TransferTimeout
    from hf_qwen3_deepstack.transfer.chunking import SendPlan
    from hf_qwen3_deepstack.transfer.protocol import KIND_BYE, ChunkHeader

    if rank == 0:
        ctrls = [_recv_ctrl()]  # PULL(NEXT)
        plan5 = SendPlan.build(random_output(5, 1, 10, 2))
        h5 = plan5.header(5, 0, 0, capacity=16)
        dist.send(h5.to_tensor(), dst=1, tag=DATA_TAG)  # header only, for now
        ctrls.append(_recv_ctrl())  # PREFETCH(NEXT): posted with the payload receives
        time.sleep(1.2)  # the receiver times out waiting for the data
        for m in plan5.messages(h5):
            dist.send(m, dst=1, tag=DATA_TAG)
        ctrls.append(_recv_ctrl())  # ACK(done 5)
        _send_chunk(SendPlan.build(random_output(6, 1, 12, 3)), 6)  # answers the prefetch
        ctrls.append(_recv_ctrl())  # PREFETCH(NEXT)
        ctrls.append(_recv_ctrl())  # ACK(done 6)
        dist.send(ChunkHeader(kind=KIND_BYE).to_tensor(), dst=1, tag=DATA_TAG)
        ctrls.append(_recv_ctrl())  # CLOSE
        return ctrls
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver

    rx = EncoderOutputReceiver(0, capacity_tokens=16, timeout=10)
    try:
        rx.recv(timeout=0.4)
        raise AssertionError("expected a TransferTimeout")
    except TransferTimeout as e:
        err = (str(e), e.request_id, e.offset, rx.interrupted)
    got = []
    for seed, seq, n in ((5, 10, 2), (6, 12, 3)):
        rid, out = rx.recv()
        assert_same(out, random_output(seed, 1, seq, n), f"request {rid}")
        got.append(rid)
    try:
        rx.recv()
        raise AssertionError("expected PeerClosed")
    except PeerClosed:
        pass
    rx.close()
    return err, got


def test_timeout_while_data_in_flight_resumes_and_prefetched_header_is_the_next_request():
    from hf_qwen3_deepstack.transfer.protocol import KIND_ACK, KIND_CLOSE, KIND_PREFETCH, KIND_PULL, NEXT, NONE_ID

    ctrls, ((msg, rid, offset, interrupted), got) = run_ranks(_payload_timeout, timeout=60)
    assert (rid, offset, interrupted) == (5, 0, 5)
    assert "no chunk data at token offset 0" in msg and "request 5" in msg
    assert got == [5, 6]  # each bit-identical to what was sent (checked on the receiving rank)
    # (kind, request_id, offset, done_request_id, done_total)
    assert ctrls == [
        (KIND_PULL, NEXT, 0, NONE_ID, 0),
        (KIND_PREFETCH, NEXT, 0, NONE_ID, 0),  # the timeout did not pull again: one prefetch only
        (KIND_ACK, NEXT, 0, 5, 10),
        (KIND_PREFETCH, NEXT, 0, NONE_ID, 0),
        (KIND_ACK, NEXT, 0, 6, 12),
        (KIND_CLOSE, NEXT, 0, NONE_ID, 0),
    ]


def _bad_rows_with_prefetch(rank):
    """Rank 0 sends chunk 0 of request 5 with one placeholder id overwritten (its header's row
    count no longer matches the ids), then answers the prefetch of chunk 1."""
    import torch.distributed as dist

    from hf_qwen3_deepstack.transfer import HeaderMismatch, PeerClosed
    from hf_qwen3_deepstack.transfer.chunking import SendPlan
    from hf_qwen3_deepstack.transfer.protocol import KIND_BYE, ChunkHeader

    out = random_output(5, 1, 16, 16)  # every token visual: each chunk of 8 carries 8 rows
    if rank == 0:
        plan = SendPlan.build(out)
        ctrls = [_recv_ctrl()]  # PULL(NEXT)
        h0 = plan.header(5, 0, 0, capacity=8)
        dist.send(h0.to_tensor(), dst=1, tag=DATA_TAG)
        (packed,) = plan.messages(h0)
        ids = packed[8 * out.batch_size : 8 * (out.batch_size + 8)].view(torch.int64)
        ids[0] = 7  # no longer a placeholder
        dist.send(packed, dst=1, tag=DATA_TAG)
        ctrls.append(_recv_ctrl())  # PREFETCH(5, 8)
        h1 = plan.header(5, 1, 8, capacity=8)
        dist.send(h1.to_tensor(), dst=1, tag=DATA_TAG)
        for m in plan.messages(h1):
            dist.send(m, dst=1, tag=DATA_TAG)
        ctrls.append(_recv_ctrl())  # REJECT(5), after draining chunk 1
        ctrls.append(_recv_ctrl())  # PULL(NEXT)
        dist.send(ChunkHeader(kind=KIND_BYE).to_tensor(), dst=1, tag=DATA_TAG)
        ctrls.append(_recv_ctrl())  # CLOSE
        return ctrls
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver

    rx = EncoderOutputReceiver(0, capacity_tokens=8, timeout=10)
    try:
        rx.recv()
        raise AssertionError("expected HeaderMismatch")
    except HeaderMismatch as e:
        err = (e.request_id, e.field, rx.interrupted)
    try:
        rx.recv()
        raise AssertionError("expected PeerClosed")
    except PeerClosed:
        pass
    rx.close()
    return err


def test_row_count_mismatch_drains_the_prefetched_chunk_and_rejects_the_request():
    from hf_qwen3_deepstack.transfer.protocol import (
        KIND_CLOSE,
        KIND_PREFETCH,
        KIND_PULL,
        KIND_REJECT,
        NEXT,
        NONE_ID,
    )

    ctrls, err = run_ranks(_bad_rows_with_prefetch, timeout=60)
    assert err == (5, "row_count", None)
    assert ctrls == [
        (KIND_PULL, NEXT, 0, NONE_ID, 0),
        (KIND_PREFETCH, 5, 8, NONE_ID, 0),
        (KIND_REJECT, 5, 8, NONE_ID, 0),  # the sender drops request 5 (its handle fails)
        (KIND_PULL, NEXT, 0, NONE_ID, 0),  # and the channel goes on
        (KIND_CLOSE, NEXT, 0, NONE_ID, 0),
    ]
