"""Bad headers, expectation mismatches and silent peers raise the documented errors in time."""

import time

import pytest
import torch
from _dist import assert_same, random_output, run_ranks

CTRL_TAG, HEADER_TAG = 101, 103  # DEFAULT_TAG + 1 / + 3


def _timed_recv_error(rx, error_type, attr):
    """Time `rx.recv()` until it raises `error_type`: (seconds, message, request id, `attr`)."""
    t0 = time.monotonic()
    try:
        rx.recv()
    except error_type as e:
        return time.monotonic() - t0, str(e), e.request_id, getattr(e, attr)
    raise AssertionError(f"no {error_type.__name__}")


def _fake_sender(rank, corrupt):
    """Rank 0 plays a broken sender: reads the pull, answers with a corrupted header."""
    import torch.distributed as dist

    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, HeaderMismatch
    from hf_qwen3_deepstack.transfer.chunking import SendPlan
    from hf_qwen3_deepstack.transfer.protocol import CONTROL_WORDS, FLAG_CUDA, Control

    if rank == 0:
        ctrl = torch.empty(CONTROL_WORDS, dtype=torch.int64)
        dist.recv(ctrl, src=1, tag=CTRL_TAG)
        pull = Control.parse(ctrl.tolist())
        plan = SendPlan.build(random_output(0, 1, 10, 2))
        h = plan.header(5, 0, capacity=pull.capacity)
        if corrupt == "token_offset":
            h.token_offset = 3
        elif corrupt == "flags":  # a flag that does not exist
            h.flags |= 1 << 10
        elif corrupt == "cuda_data":  # a CUDA sender's header, to a CPU receiver
            h.flags |= FLAG_CUDA
        msg = plan.header_message(h, pull.header_bytes)
        if corrupt in ("magic", "version"):
            msg.view(torch.int64)[{"magic": 0, "version": 1}[corrupt]] += 1
        dist.send(msg, dst=1, tag=HEADER_TAG)  # an answer to PULL(NEXT): no rows follow it unasked
        return None
    rx = EncoderOutputReceiver(0, capacity_tokens=16, timeout=10)
    try:
        rx.recv()
    except HeaderMismatch as e:
        return type(e).__name__, str(e), e.request_id, e.field
    raise AssertionError("no HeaderMismatch")


@pytest.mark.parametrize("corrupt", ["magic", "version", "token_offset", "flags", "cuda_data"])
def test_wrong_header_names_request_and_field(corrupt):
    _, (kind, msg, rid, field) = run_ranks(_fake_sender, args=(corrupt,), timeout=60)
    assert kind == "HeaderMismatch"
    want = "flags" if corrupt == "cuda_data" else corrupt
    assert field == want and f"'{want}'" in msg
    assert rid == 5 and "request 5" in msg
    if corrupt == "cuda_data":  # a sender and a receiver on different devices: said at once, not a timeout
        assert "data on cuda" in msg and "data on cpu, this receiver's device" in msg and "device=" in msg, msg


def _refusing_sender(rank):
    """Rank 0 describes request 5, then refuses the pull of its rows (as a sender that lost it would)."""
    import torch.distributed as dist

    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, TransferError
    from hf_qwen3_deepstack.transfer.chunking import SendPlan
    from hf_qwen3_deepstack.transfer.protocol import (
        CONTROL_WORDS, ERR_UNKNOWN_REQUEST, KIND_ERROR, ChunkHeader, Control, header_message)

    if rank == 0:
        ctrl = torch.empty(CONTROL_WORDS, dtype=torch.int64)
        dist.recv(ctrl, src=1, tag=CTRL_TAG)  # "describe the next request"
        first = Control.parse(ctrl.tolist())
        plan = SendPlan.build(random_output(0, 1, 10, 2))
        dist.send(plan.header_message(plan.header(5, 0, first.capacity), first.header_bytes), dst=1, tag=HEADER_TAG)
        dist.recv(ctrl, src=1, tag=CTRL_TAG)  # the pull of its rows
        pull = Control.parse(ctrl.tolist())
        refusal = ChunkHeader(kind=KIND_ERROR, request_id=pull.request_id, token_offset=pull.offset,
                              error_code=ERR_UNKNOWN_REQUEST)
        dist.send(header_message(refusal), dst=1, tag=HEADER_TAG)
        return pull.request_id, pull.offset
    return _timed_recv_error(EncoderOutputReceiver(0, capacity_tokens=16, timeout=10), TransferError, "field")


def test_refused_data_pull_raises_at_once_naming_request_and_reason():
    (rid, offset), (elapsed, msg, err_rid, field) = run_ranks(_refusing_sender, timeout=60)
    assert (rid, offset) == (5, 0)
    assert elapsed < 5  # the refusal ends the wait for the data; no timeout (10 s) needed
    assert err_rid == 5 and "request 5" in msg and "refused" in msg
    assert field == "unknown request id"


def _expectation_mismatch(rank, field):
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender, HeaderMismatch

    good = random_output(1, 1, 12, 4, hidden=16, levels=3)
    bad = {
        "hidden_size": random_output(2, 1, 12, 4, hidden=8, levels=3),
        "num_deepstack_levels": random_output(2, 1, 12, 4, hidden=16, levels=2),
        "embed_dtype": random_output(2, 1, 12, 4, hidden=16, levels=3, dtype=torch.bfloat16),
    }[field]
    if rank == 0:
        tx = EncoderOutputSender(1, timeout=10)
        try:
            tx.send(3, bad)
            raise AssertionError("sender was not told about the rejection")
        except HeaderMismatch as e:
            sender_err = (str(e), e.request_id, e.field)
        tx.send(4, good)  # the channel is still usable
        tx.close()
        return sender_err
    rx = EncoderOutputReceiver(0, capacity_tokens=8, timeout=10, hidden_size=16, num_deepstack_levels=3,
                               dtype=torch.float32)
    try:
        rx.recv()
        raise AssertionError("no HeaderMismatch")
    except HeaderMismatch as e:
        recv_err = (str(e), e.request_id, e.field)
    rid, out = rx.recv()
    assert rid == 4
    assert_same(out, good)
    rx.close()
    return recv_err


@pytest.mark.parametrize("field", ["hidden_size", "num_deepstack_levels", "embed_dtype"])
def test_hidden_size_k_and_dtype_mismatch_rejects_the_request(field):
    sender_err, recv_err = run_ranks(_expectation_mismatch, args=(field,), timeout=60)
    for msg, rid, f in (sender_err, recv_err):
        assert rid == 3 and "request 3" in msg
        assert f == field and f"'{field}'" in msg


def _silent_sender(rank):
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, TransferTimeout

    if rank == 0:
        time.sleep(2.5)  # never answers
        return None
    return _timed_recv_error(EncoderOutputReceiver(0, capacity_tokens=8, timeout=0.8), TransferTimeout, "offset")


def test_silent_sender_times_out_naming_request_and_offset():
    _, (elapsed, msg, rid, offset) = run_ranks(_silent_sender, timeout=60)
    assert 0.7 <= elapsed < 1.5
    assert "request <next>" in msg and "token offset 0" in msg
    assert offset == 0


def _silent_receiver(rank):
    from hf_qwen3_deepstack.transfer import EncoderOutputSender, TransferTimeout

    if rank == 1:
        time.sleep(2.5)  # never pulls
        return None
    tx = EncoderOutputSender(1, timeout=0.8)
    t0 = time.monotonic()
    try:
        tx.send(9, random_output(0, 1, 10, 2))
    except TransferTimeout as e:
        return time.monotonic() - t0, str(e), e.request_id, e.offset, tx.in_flight
    raise AssertionError("no TransferTimeout")


def test_silent_receiver_times_out_and_request_is_retained():
    (elapsed, msg, rid, offset, in_flight), _ = run_ranks(_silent_receiver, timeout=60)
    assert 0.7 <= elapsed < 1.5
    assert rid == 9 and "request 9" in msg and "acknowledged token offset 0" in msg
    assert in_flight == 1  # kept until acknowledged


def _dead_receiver(rank):
    import os

    from hf_qwen3_deepstack.transfer import EncoderOutputSender, TransferError

    if rank == 1:
        time.sleep(0.3)
        os._exit(0)  # dies without a word
    tx = EncoderOutputSender(1, timeout=5.0)
    t0 = time.monotonic()
    try:
        tx.send(2, random_output(0, 1, 10, 2))
    except TransferError as e:
        return time.monotonic() - t0, type(e).__name__, str(e)
    raise AssertionError("no TransferError")


def test_dead_receiver_fails_the_request_within_the_timeout():
    ctx_results = run_ranks(_dead_receiver, timeout=60, allow_missing=(1,))
    elapsed, kind, msg = ctx_results[0]
    assert elapsed < 5.5
    assert "request 2" in msg or "rank 1" in msg


def _outside_peers(rank):
    """A sender/receiver whose peer is outside the world, or outside the given group."""
    import torch.distributed as dist

    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    group = dist.new_group([0])  # every rank creates it; only rank 0 is a member
    if rank == 1:
        return None
    messages = []
    for make in (lambda: EncoderOutputSender(7), lambda: EncoderOutputReceiver([1, 7], capacity_tokens=8),
                 lambda: EncoderOutputSender(1, group)):
        try:
            make()
        except ValueError as e:
            messages.append(str(e))
    return messages


def test_peer_outside_the_group_is_a_clear_error_at_construction():
    messages, _ = run_ranks(_outside_peers, timeout=60)
    assert len(messages) == 3, messages
    assert all("peer rank" in m and "not a member" in m for m in messages), messages
    assert "peer rank 7" in messages[0] and "peer rank 1" in messages[2]


def _group_without_cpu_backend(rank):
    """Like a group created with backend="nccl": nothing carries host tensors."""
    import torch.distributed as dist

    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    group = dist.new_group([0, 1], backend="cuda:gloo")
    make = (lambda: EncoderOutputSender(1, group)) if rank == 0 else (
        lambda: EncoderOutputReceiver(0, group, capacity_tokens=8))
    try:
        make()
    except ValueError as e:
        return str(e)
    return None


def test_a_group_without_a_cpu_backend_is_a_clear_error_at_construction():
    """Headers and control messages are host tensors: a group that cannot carry them (NCCL only)
    is refused before any thread starts, with the backend string that fixes it."""
    messages = run_ranks(_group_without_cpu_backend, timeout=60)
    for m in messages:
        assert m is not None and "has no CPU backend" in m and "backend='cpu:gloo,cuda:nccl'" in m, messages


def _bad_second_header(rank):
    """Rank 0's plan reports a wrong `row_offset` in chunk 1 of request 3 (its rows are still the
    right size): the receiver rejects request 3 mid-way; request 4 must then arrive intact."""
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender, HeaderMismatch

    bad, good = random_output(3, 1, 64, 40, hidden=32), random_output(4, 2, 30, 25, hidden=32)
    if rank == 0:
        from hf_qwen3_deepstack.transfer import chunking

        header = chunking.SendPlan.header

        def wrong_row_offset(self, request_id, offset, capacity):
            h = header(self, request_id, offset, capacity)
            if request_id == 3 and offset == 16:
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
    rx = EncoderOutputReceiver(0, capacity_tokens=16, timeout=20)
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


def test_a_chunk_rejected_mid_request_leaves_the_channel_in_step():
    sender_err, (rid, field, msg) = run_ranks(_bad_second_header, timeout=90)
    assert sender_err == (3, "row_offset")
    assert (rid, field) == (3, "row_offset") and "token offset 16" in msg
