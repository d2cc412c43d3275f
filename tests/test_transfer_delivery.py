"""Bit-exact delivery of EncoderOutput across two gloo processes, single- and multi-chunk."""

import pytest
import torch
import torch.distributed as dist
from _dist import IMAGE_ID, VIDEO_ID, assert_same, random_output, run_ranks

# (name, batch, seq, n_visual, dtype, mask_dtype, token ids); capacity is CAP (small) or BIG_CAP
CAP = 16
CASES = [
    ("text_only", 1, 12, 0, torch.float32, torch.int64, (IMAGE_ID, VIDEO_ID)),
    ("text_only_no_ids", 2, 7, 0, torch.float32, None, (None, None)),
    ("one_visual_row", 1, 9, 1, torch.float32, torch.int64, (IMAGE_ID, VIDEO_ID)),
    ("exactly_capacity", 1, CAP, 10, torch.bfloat16, torch.int64, (IMAGE_ID, VIDEO_ID)),
    ("capacity_plus_one", 1, CAP + 1, 11, torch.bfloat16, torch.int64, (IMAGE_ID, None)),
    ("many_chunks_b2_bf16", 2, 5 * CAP + 3, 100, torch.bfloat16, torch.int64, (IMAGE_ID, VIDEO_ID)),
    ("many_chunks_b2_fp32_bool_mask", 2, 3 * CAP + 5, 60, torch.float32, torch.bool, (None, VIDEO_ID)),
    ("all_visual_b1", 1, 2 * CAP, 2 * CAP, torch.float32, None, (IMAGE_ID, VIDEO_ID)),
]


def expected_payload_bytes(out, cap: int) -> int:
    """Bytes on the wire: per-token ids + 3 positions (+ mask) as int64, rope deltas once, and
    (1 + K) x H rows for the visual tokens only -- no text-row embeddings."""
    t = out.input_ids.numel()
    per_token = 8 * (4 + (out.attention_mask is not None))
    rows = out.num_visual_tokens * (1 + out.num_deepstack_levels) * out.hidden_size * out.visual_embeds.element_size()
    return t * per_token + 8 * out.batch_size + rows


def _case_output(i, case, hidden):
    _, b, s, n, dtype, mask_dtype, ids = case
    return random_output(100 + i, b, s, n, hidden=hidden, dtype=dtype, mask_dtype=mask_dtype, token_ids=ids)


def _deliver(rank, cap, hidden, streaming):
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    if rank == 0:
        tx = EncoderOutputSender(1, timeout=20)
        for i, case in enumerate(CASES):
            tx.send(i, _case_output(i, case, hidden))
        tx.close()
        return dict(tx.stats.per_request_bytes), tx.stats.payload_bytes_sent, tx.stats.chunks_sent
    rx = EncoderOutputReceiver(0, capacity_tokens=cap, timeout=20)
    staging = None
    chunk_counts = []
    for i, case in enumerate(CASES):
        want = _case_output(i, case, hidden)
        if streaming:
            rid, got, n_chunks = _assemble(rx, want)
            staging = staging or rx.staging_nbytes
            assert rx.staging_nbytes == staging, "staging buffer must be allocated once"
        else:
            rid, got = rx.recv()
            n_chunks = None
            assert rx.staging_nbytes == 0, "recv() needs no staging"
        assert rid == i, (rid, i)
        assert_same(got, want, case[0])
        chunk_counts.append(n_chunks)
    rx.close()
    return staging, chunk_counts


def _assemble(rx, want):
    """Rebuild an EncoderOutput from recv_chunks(), checking each chunk against its own tokens."""
    flat_ids = want.input_ids.reshape(-1)
    vis_before = torch.isin(flat_ids, torch.tensor([i for i in (want.image_token_id, want.video_token_id)
                                                     if i is not None] or [-1])).cumsum(0)
    ids, pos, mask, vis, deep = [], [], [], [], []
    n_chunks, rid = 0, None
    for chunk in rx.recv_chunks():
        o, c = chunk.token_offset, chunk.token_count
        assert c <= rx.capacity_tokens
        r0 = int(vis_before[o - 1]) if o else 0
        assert chunk.visual_row_offset == r0
        n = chunk.visual_embeds.shape[0]
        # deepstack rows travel with the chunk of their tokens
        assert torch.equal(chunk.deepstack_visual_embeds, want.deepstack_visual_embeds[:, r0 : r0 + n])
        ids.append(chunk.input_ids.clone())
        pos.append(chunk.position_ids.clone())
        if chunk.attention_mask is not None:
            mask.append(chunk.attention_mask.to(chunk.mask_dtype).clone())
        vis.append(chunk.visual_embeds.clone())
        deep.append(chunk.deepstack_visual_embeds.clone())
        rope, rid, n_chunks = chunk.rope_deltas.clone(), chunk.request_id, n_chunks + 1
        b, s = chunk.batch_size, chunk.seq_len
    from hf_qwen3_deepstack.encoder_output import EncoderOutput

    got = EncoderOutput(
        input_ids=torch.cat(ids).view(b, s),
        position_ids=torch.cat(pos, 1).view(3, b, s),
        rope_deltas=rope,
        visual_embeds=torch.cat(vis),
        deepstack_visual_embeds=torch.cat(deep, 1),
        attention_mask=torch.cat(mask).view(b, s) if mask else None,
        image_token_id=chunk.image_token_id,
        video_token_id=chunk.video_token_id,
    )
    return rid, got, n_chunks


@pytest.mark.parametrize("cap,hidden", [(CAP, 16), (64, 384)], ids=["small_chunks", "large_chunks"])
def test_recv_is_bit_exact_and_ships_only_visual_rows(cap, hidden):
    (per_request, payload, chunks_sent), _ = run_ranks(_deliver, args=(cap, hidden, False), timeout=90)
    from hf_qwen3_deepstack.transfer.protocol import HEADER_BYTES

    total_chunks = total_payload = 0
    for i, case in enumerate(CASES):
        out = _case_output(i, case, hidden)
        n_chunks = max(1, -(-out.input_ids.numel() // cap))
        total_chunks += n_chunks
        total_payload += expected_payload_bytes(out, cap)
        # per chunk one header message: header words, its ints, an 8-byte trailer; then its rows
        assert per_request[i] == expected_payload_bytes(out, cap) + n_chunks * (HEADER_BYTES + 8), case[0]
    assert chunks_sent == total_chunks
    assert payload == total_payload  # nothing sent twice


def test_recv_chunks_streams_each_chunk_with_its_deepstack_rows():
    _, (staging, chunk_counts) = run_ranks(_deliver, args=(CAP, 16, True), timeout=90)
    assert staging > 0
    for case, n in zip(CASES, chunk_counts):
        assert n == max(1, -(-case[1] * case[2] // CAP)), case[0]


def _ack_then_close(rank: int):
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    out = random_output(7, 1, 40, 6, hidden=24)
    if rank == 0:
        tx = EncoderOutputSender(1, timeout=10)
        tx.send(0, out)  # raises PeerClosed if the receiver's CLOSE overtook its acknowledgement
        tx.close()
        return tx.stats.requests_done
    rx = EncoderOutputReceiver(0, capacity_tokens=64, timeout=10)
    _, got = rx.recv()
    assert_same(got, out)
    rx.close()  # at once: its CLOSE must still go after the acknowledgement
    return None


def test_final_acknowledgement_reaches_the_sender_before_a_later_close():
    done, _ = run_ranks(_ack_then_close, timeout=60)
    assert done == 1


ONE_CHUNK_MASKS = [torch.int64, torch.bool, torch.int32, None]


def _one_chunk_masks(rank: int):
    """One-chunk requests of several MB (rows straight into the result) keep their mask dtype."""
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    outs = [random_output(40 + i, 1, 60, 40 if i else 0, hidden=2048, mask_dtype=m)
            for i, m in enumerate(ONE_CHUNK_MASKS)]
    if rank == 0:
        tx = EncoderOutputSender(1, timeout=20)
        for i, out in enumerate(outs):
            tx.send(i, out)
        tx.close()
        return tx.stats.chunks_sent
    rx = EncoderOutputReceiver(0, capacity_tokens=64, timeout=20)
    for i, want in enumerate(outs):
        rid, got = rx.recv()
        assert rid == i
        assert_same(got, want, f"mask {ONE_CHUNK_MASKS[i]}")
    rx.close()
    return None


def test_one_chunk_requests_are_exact_and_keep_their_mask_dtype():
    chunks_sent, _ = run_ranks(_one_chunk_masks, timeout=90)
    assert chunks_sent == len(ONE_CHUNK_MASKS)


def _token_major_rows(rank: int):
    """A chunk's rows are one message whatever K is."""
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    outs = [random_output(60, 1, 200, 150, hidden=1024, levels=3).token_major(),  # as the encoder makes them
            random_output(61, 2, 100, 120, hidden=1024, levels=3)]  # (N, H) + (K, N, H): interleaved once
    if rank == 0:
        tx = EncoderOutputSender(1, timeout=20)
        counts = []
        for i, out in enumerate(outs):
            before = tx.stats.messages_sent
            tx.send(i, out)
            counts.append(tx.stats.messages_sent - before)
        dist.barrier()  # counted: now the receiver may close (the sender answers its close with a BYE)
        tx.close()
        return counts
    rx = EncoderOutputReceiver(0, capacity_tokens=50, timeout=20)
    token_major = []
    for i, want in enumerate(outs):
        rid, got = rx.recv()
        assert rid == i
        assert_same(got, want)
        token_major.append(got.visual_rows() is not None)
    dist.barrier()
    rx.close()
    return token_major


def test_each_chunk_sends_its_rows_as_one_message_and_results_are_token_major():
    counts, token_major = run_ranks(_token_major_rows, timeout=90)
    # 200 tokens at capacity 50 = 4 chunks: per chunk a header message (with its ints) and the rows
    assert counts == [4 * 2, 4 * 2]
    assert token_major == [True, True]
