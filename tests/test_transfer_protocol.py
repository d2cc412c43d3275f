"""In-process checks of the wire format and the chunk layout (no processes, fast)."""

import pytest
import torch
from _dist import random_output

from hf_qwen3_deepstack.transfer import HeaderMismatch, TransferError
from hf_qwen3_deepstack.transfer.chunking import PACK_LIMIT, SendPlan, split_ints, staging_nbytes, staging_views
from hf_qwen3_deepstack.transfer.protocol import HEADER_WORDS, MAGIC, ChunkHeader, Control


def test_header_round_trip_and_fixed_size():
    plan = SendPlan.build(random_output(0, 2, 9, 5))
    h = plan.header(42, 0, 0, capacity=8)
    t = h.to_tensor()
    assert t.dtype == torch.int64 and t.numel() == HEADER_WORDS and int(t[0]) == MAGIC
    assert ChunkHeader.from_tensor(t) == h
    c = Control(request_id=42, offset=8, capacity=8, done_request_id=41, done_total=18)
    assert Control.from_tensor(c.to_tensor()) == c


@pytest.mark.parametrize("word,field", [(0, "magic"), (1, "version"), (7, "checksum")])
def test_corrupt_header_is_rejected_naming_the_field(word, field):
    t = SendPlan.build(random_output(0, 1, 9, 2)).header(42, 0, 0, capacity=8).to_tensor()
    t[word] += 1
    with pytest.raises(HeaderMismatch) as e:
        ChunkHeader.from_tensor(t)
    assert e.value.field == field and "request 42" in str(e.value)


@pytest.mark.parametrize("cap", [1, 3, 8, 18, 100])
def test_chunks_cover_tokens_and_carry_exactly_their_visual_rows(cap):
    out = random_output(3, 2, 9, 7, hidden=8, levels=2)
    plan = SendPlan.build(out)
    staging = torch.empty(staging_nbytes(cap, 4, 2, 8, torch.float32), dtype=torch.uint8)
    offset, rows, chunks = 0, 0, 0
    while offset < plan.total:
        h = plan.header(1, chunks, offset, cap)
        assert h.token_count == min(cap, plan.total - offset) and h.row_offset == rows
        assert h.first == (offset == 0) and h.last == (offset + h.token_count == plan.total)
        msgs = plan.messages(h)
        views = staging_views(staging, h)
        assert [m.numel() * m.element_size() for m in msgs] == [v.numel() * v.element_size() for v in views.targets]
        for m, v in zip(msgs, views.targets):  # what a recv would do
            v.view(-1).view(torch.uint8).copy_(m.reshape(-1).view(torch.uint8))
        parts = split_ints(views.ints, h)
        assert torch.equal(parts.ids, out.input_ids.reshape(-1)[offset : offset + h.token_count])
        assert torch.equal(views.deepstack, out.deepstack_visual_embeds[:, rows : rows + h.row_count])
        assert h.packed == (h.row_count > 0 and h.int_bytes + h.embed_bytes <= PACK_LIMIT)
        offset, rows, chunks = offset + h.token_count, rows + h.row_count, chunks + 1
    assert rows == out.num_visual_tokens and chunks == -(-plan.total // cap)


def test_header_field_outside_int64_is_refused_naming_the_field():
    with pytest.raises(TransferError) as e:
        ChunkHeader(request_id=1 << 63).to_tensor()
    assert e.value.field == "request_id" and "int64" in str(e.value)
