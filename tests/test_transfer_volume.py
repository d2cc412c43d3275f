"""Hundreds of requests with several isends in flight; several senders feeding one receiver."""

import torch
from _dist import assert_same, random_output, run_ranks

N_REQUESTS = 300
CAP = 32


def _shape(i):
    g = torch.Generator().manual_seed(i)
    b = int(torch.randint(1, 3, (1,), generator=g))
    s = int(torch.randint(1, 90, (1,), generator=g))
    n = int(torch.randint(0, b * s + 1, (1,), generator=g))
    dtype = torch.bfloat16 if i % 2 else torch.float32
    return b, s, n, dtype


def _request(i):
    b, s, n, dtype = _shape(i)
    return random_output(1000 + i, b, s, n, hidden=32, levels=3, dtype=dtype)


def _volume(rank):
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    if rank == 0:
        tx = EncoderOutputSender(1, timeout=30, max_in_flight=6)
        handles, max_in_flight = [], 0
        for i in range(N_REQUESTS):
            handles.append(tx.isend(i, _request(i)))
            max_in_flight = max(max_in_flight, tx.in_flight)
        for h in handles:
            h.wait()
        assert all(h.done() for h in handles)
        tx.close()
        return max_in_flight, tx.stats.requests_done, tx.stats.payload_bytes_sent
    rx = EncoderOutputReceiver(0, capacity_tokens=CAP, timeout=30)
    order = []
    for _ in range(N_REQUESTS):
        rid, out = rx.recv()
        assert_same(out, _request(rid), f"request {rid}")
        order.append(rid)
    rx.close()
    return order


def test_hundreds_of_requests_with_isends_in_flight_arrive_in_order():
    (max_in_flight, done, payload), order = run_ranks(_volume, timeout=120)
    assert order == list(range(N_REQUESTS))
    assert done == N_REQUESTS
    assert payload == sum(_request(i).nbytes() for i in range(N_REQUESTS))  # nothing sent twice
    assert 2 <= max_in_flight <= 6  # several in flight, bounded by max_in_flight


PER_SENDER = 40


def _fan_in(rank):
    """Ranks 0 and 1 encode, rank 2 receives from whichever is ready."""
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender, PeerClosed

    if rank < 2:
        tx = EncoderOutputSender(2, timeout=30)
        handles = [tx.isend(i, _request(rank * 1000 + i)) for i in range(PER_SENDER)]
        for h in handles:
            h.wait()
        tx.close()
        return None
    rx = EncoderOutputReceiver([0, 1], capacity_tokens=CAP, timeout=30)
    seen = {0: [], 1: []}
    while True:
        try:
            rid, out = rx.recv()
        except PeerClosed:
            break
        assert_same(out, _request(rx.last_peer * 1000 + rid), f"rank {rx.last_peer} request {rid}")
        seen[rx.last_peer].append(rid)
    rx.close()
    return seen


def test_receiver_takes_requests_from_whichever_sender_is_ready():
    _, _, seen = run_ranks(_fan_in, world_size=3, timeout=120)
    assert seen[0] == list(range(PER_SENDER))
    assert seen[1] == list(range(PER_SENDER))


def _recycled(rank):
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    if rank == 0:
        tx = EncoderOutputSender(1, timeout=30)
        for i in range(6):
            tx.send(i, _request(i))
        tx.close()
        return None
    rx = EncoderOutputReceiver(0, capacity_tokens=CAP, timeout=30)
    ptrs = []
    for _ in range(6):
        rid, out = rx.recv()
        assert_same(out, _request(rid), f"request {rid}")
        ptrs.append(out.visual_embeds.untyped_storage().data_ptr() if out.num_visual_tokens else None)
        rx.recycle(out)
    rx.close()
    return ptrs


def test_recycled_results_are_reused_and_still_exact():
    _, ptrs = run_ranks(_recycled, timeout=60)
    seen = [p for p in ptrs if p is not None]
    assert len(set(seen)) < len(seen)  # some later result reused a recycled buffer


def _recycle_keeps_storage(rank):
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    if rank == 0:
        tx = EncoderOutputSender(1, timeout=30)
        for i in range(3):
            tx.send(i, _request(0))  # same shape three times
        tx.close()
        return None
    rx = EncoderOutputReceiver(0, capacity_tokens=CAP, timeout=30)
    outs = [rx.recv()[1]]
    rx.recycle(outs[0])
    outs.append(rx.recv()[1])  # outs[0] is still referenced: only the pool can hand its memory out again
    outs.append(rx.recv()[1])  # nothing recycled since: fresh memory
    for out in outs:
        assert_same(out, _request(0), "recycled")
    rx.close()
    return [o.visual_embeds.untyped_storage().data_ptr() for o in outs]


def test_recycle_hands_the_same_embedding_storage_to_the_next_result():
    _, (p0, p1, p2) = run_ranks(_recycle_keeps_storage, timeout=60)
    assert p1 == p0
    assert p2 not in (p0, p1)
