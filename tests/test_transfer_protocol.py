"""In-process checks of the wire format and the chunk layout (no processes, fast)."""

import pytest
import torch
from _dist import random_output

from hf_qwen3_deepstack.transfer import HeaderMismatch, TransferError
from hf_qwen3_deepstack.transfer.chunking import SendPlan, split_ints
from hf_qwen3_deepstack.transfer.protocol import (
    HEADER_BYTES, HEADER_WORDS, MAGIC, TRAILER, ChunkHeader, Control)


def _words(msg: torch.Tensor) -> list[int]:
    return msg[:HEADER_BYTES].view(torch.int64).tolist()


def test_header_round_trip_and_fixed_size():
    plan = SendPlan.build(random_output(0, 2, 9, 5))
    h = plan.header(42, 0, capacity=8)
    msg = plan.header_message(h, 1 << 20)
    assert msg.dtype == torch.uint8 and msg.numel() == HEADER_BYTES + h.int_bytes + 8
    assert _words(msg)[0] == MAGIC and len(_words(msg)) == HEADER_WORDS
    assert ChunkHeader.parse(_words(msg)) == h
    assert msg[-8:].view(torch.int64).item() == TRAILER
    c = Control(request_id=42, offset=8, capacity=8, total=18, header_bytes=999)
    assert Control.parse(c.to_tensor().tolist()) == c


@pytest.mark.parametrize("word,field", [(0, "magic"), (1, "version"), (7, "checksum")])
def test_corrupt_header_is_rejected_naming_the_field(word, field):
    words = _words(SendPlan.build(random_output(0, 1, 9, 2)).header_message(
        SendPlan.build(random_output(0, 1, 9, 2)).header(42, 0, capacity=8), 1 << 20))
    words[word] += 1
    with pytest.raises(HeaderMismatch) as e:
        ChunkHeader.parse(words)
    assert e.value.field == field and "request 42" in str(e.value)


@pytest.mark.parametrize("cap", [1, 3, 8, 18, 100])
def test_chunks_cover_tokens_and_carry_exactly_their_visual_rows(cap):
    out = random_output(3, 2, 9, 7, hidden=8, levels=2)
    plan = SendPlan.build(out)
    offset, rows, chunks = 0, 0, 0
    while offset < plan.total:
        h = plan.header(1, offset, cap)
        assert h.token_count == min(cap, plan.total - offset) and h.row_offset == rows
        assert h.first == (offset == 0) and h.last == (offset + h.token_count == plan.total)
        msg = plan.header_message(h, 1 << 20)
        parts = split_ints(msg[HEADER_BYTES : HEADER_BYTES + h.int_bytes].view(torch.int64), h)
        assert torch.equal(parts.ids, out.input_ids.reshape(-1)[offset : offset + h.token_count])
        assert torch.equal(parts.pos, out.position_ids.reshape(3, -1)[:, offset : offset + h.token_count])
        r = plan.rows_message(h)
        if h.row_count:
            assert r.shape == (h.row_count, 3, 8) and r.numel() * r.element_size() == h.embed_bytes
            assert torch.equal(r[:, 1:].transpose(0, 1), out.deepstack_visual_embeds[:, rows : rows + h.row_count])
            assert h.rows_tail == int(r.reshape(-1).view(torch.uint8)[-1])
        else:
            assert r is None and h.embed_bytes == 0
        offset, rows, chunks = offset + h.token_count, rows + h.row_count, chunks + 1
    assert rows == out.num_visual_tokens and chunks == -(-plan.total // cap)


def test_a_header_message_too_long_for_the_receiver_goes_without_its_ints():
    plan = SendPlan.build(random_output(0, 3, 9, 2))
    h = plan.header(1, 0, capacity=27)
    assert plan.header_message(h, HEADER_BYTES + h.int_bytes + 8).numel() == HEADER_BYTES + h.int_bytes + 8
    assert plan.header_message(h, HEADER_BYTES + h.int_bytes).numel() == HEADER_BYTES + 8


def test_header_field_outside_int64_is_refused_naming_the_field():
    with pytest.raises(TransferError) as e:
        ChunkHeader(request_id=1 << 63).to_bytes()
    assert e.value.field == "request_id" and "int64" in str(e.value)
