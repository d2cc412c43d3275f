"""Resume after an interruption continues from the acknowledged offset; acknowledged bytes are never re-sent."""

import time

import pytest
import torch
from _dist import assert_same, random_output, run_ranks

CAP = 8
B, S, N = 2, 20, 25  # 40 tokens -> 5 chunks of 8
RID = 7


def _want():
    return random_output(7, B, S, N, hidden=16, levels=3, dtype=torch.bfloat16)


def _chunk_payload_bytes(want, offset, count):
    """Bytes of one chunk's data: int section + visual/deepstack rows of its tokens."""
    flat = want.input_ids.reshape(-1)
    rows = int(torch.isin(flat[offset : offset + count], torch.tensor([want.image_token_id, want.video_token_id])).sum())
    n_ints = (want.batch_size if offset == 0 else 0) + 5 * count
    return 8 * n_ints + rows * (1 + want.num_deepstack_levels) * want.hidden_size * 2


def _sender(stall_at=None, stall_s=0.0):
    from hf_qwen3_deepstack.transfer import EncoderOutputSender

    sent = []

    def on_chunk(rid, offset, count):
        sent.append((offset, count))
        if offset == stall_at and sent.count((offset, count)) == 1:
            time.sleep(stall_s)

    tx = EncoderOutputSender(1, timeout=20, on_chunk=on_chunk)
    tx.send(RID, _want())
    tx.close()
    return sent, tx.stats.payload_bytes_sent


def _consumer_raises(rank):
    if rank == 0:
        return _sender()
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver

    rx = EncoderOutputReceiver(0, capacity_tokens=CAP, timeout=20)
    kept = []
    try:
        for chunk in rx.recv_chunks():
            if chunk.chunk_index == 2:
                raise ValueError("consumer failed on chunk 2")
            kept.append(_copy(chunk))
    except ValueError:
        pass
    assert rx.interrupted == RID
    for chunk in rx.resume(RID):
        kept.append(_copy(chunk))
    assert rx.interrupted is None
    rx.close()
    return kept


def _copy(chunk):
    return {
        "offset": chunk.token_offset,
        "ids": chunk.input_ids.clone(),
        "pos": chunk.position_ids.clone(),
        "mask": chunk.attention_mask.clone(),
        "rope": chunk.rope_deltas.clone(),
        "row0": chunk.visual_row_offset,
        "vis": chunk.visual_embeds.clone(),
        "deep": chunk.deepstack_visual_embeds.clone(),
    }


def test_resume_after_consumer_exception_yields_the_unacknowledged_chunk_again_without_resending():
    (sent, payload_sent), kept = run_ranks(_consumer_raises, timeout=60)
    want = _want()
    # the chunk at 16 is still in staging (the next rows are pulled only after it is acknowledged)
    assert [o for o, _ in sent] == [0, 8, 16, 24, 32]
    assert payload_sent == sum(_chunk_payload_bytes(want, o, CAP) for o in range(0, B * S, CAP))
    # reassembled data is identical
    assert [k["offset"] for k in kept] == [0, 8, 16, 24, 32]
    assert torch.equal(torch.cat([k["ids"] for k in kept]), want.input_ids.reshape(-1))
    assert torch.equal(torch.cat([k["pos"] for k in kept], 1), want.position_ids.reshape(3, -1))
    assert torch.equal(torch.cat([k["mask"] for k in kept]), want.attention_mask.reshape(-1))
    assert torch.equal(kept[-1]["rope"], want.rope_deltas)
    vis = torch.cat([k["vis"] for k in kept])
    assert vis.dtype == torch.bfloat16 and torch.equal(vis, want.visual_embeds)
    assert torch.equal(torch.cat([k["deep"] for k in kept], 1), want.deepstack_visual_embeds)


def _timeout_then_resume(rank, use_resume):
    if rank == 0:
        return _sender(stall_at=16, stall_s=2.0)
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, TransferTimeout

    rx = EncoderOutputReceiver(0, capacity_tokens=CAP, timeout=20)
    t0 = time.monotonic()
    try:
        rx.recv(timeout=0.6)
        raise AssertionError("expected a TransferTimeout")
    except TransferTimeout as e:
        elapsed = time.monotonic() - t0
        err = (str(e), e.request_id, e.offset)
    assert rx.interrupted == RID
    rid, got = rx.resume(RID) if use_resume else rx.recv()
    assert rid == RID
    assert_same(got, _want(), "resumed")
    rx.close()
    return err, elapsed


def _check_timeout_resume(use_resume):
    (sent, payload_sent), ((msg, rid, offset), elapsed) = run_ranks(
        _timeout_then_resume, args=(use_resume,), timeout=60)
    assert rid == RID and offset == 16
    assert f"request {RID}" in msg and "token offset 16" in msg
    assert elapsed < 1.5
    want = _want()
    assert [o for o, _ in sent] == [0, 8, 16, 24, 32]
    assert payload_sent == sum(_chunk_payload_bytes(want, o, CAP) for o in range(0, B * S, CAP))


def test_recv_after_timeout_continues_without_resending():
    _check_timeout_resume(use_resume=False)


def test_resume_by_request_id_after_timeout():
    _check_timeout_resume(use_resume=True)
