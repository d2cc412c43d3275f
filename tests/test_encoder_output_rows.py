"""Token-major visual rows: `visual_embeds` (N, H) and `deepstack_visual_embeds` (K, N, H) as views
of one (N, 1+K, H) buffer, recognised, produced on demand, kept by `.to()`, sent without a copy."""

import pytest
import torch
from _dist import random_output

from hf_qwen3_deepstack.encoder_output import visual_rows_to_fields
from hf_qwen3_deepstack.transfer.chunking import SendPlan


def _token_major(out):
    rows = torch.cat([out.visual_embeds[:, None], out.deepstack_visual_embeds.transpose(0, 1)], dim=1)
    visual, deepstack = visual_rows_to_fields(rows)
    out.visual_embeds, out.deepstack_visual_embeds = visual, deepstack
    return out, rows


@pytest.mark.parametrize("n,levels", [(7, 3), (1, 3), (5, 0), (4, 1)])
def test_views_of_one_token_major_buffer_are_recognised(n, levels):
    out, rows = _token_major(random_output(1, 1, 12, n, hidden=8, levels=levels))
    found = out.visual_rows()
    assert found is not None and found.data_ptr() == rows.data_ptr() and torch.equal(found, rows)


def test_separate_or_misaligned_tensors_are_not_token_major():
    out = random_output(2, 1, 12, 6, hidden=8)
    assert out.visual_rows() is None  # two separate tensors
    rows = torch.randn(6, 4, 8)
    out.visual_embeds, out.deepstack_visual_embeds = rows[:, 1], rows[:, [0, 2, 3]].transpose(0, 1)
    assert out.visual_rows() is None  # deepstack is not the rows right after the visual row
    out.visual_embeds, out.deepstack_visual_embeds = rows[:, 0], rows[:, 1:].transpose(0, 1).contiguous()
    assert out.visual_rows() is None
    assert random_output(3, 1, 12, 0, hidden=8).visual_rows() is None  # no rows at all


def test_token_major_copy_has_the_same_values_and_is_itself_when_already_token_major():
    out = random_output(4, 2, 10, 9, hidden=8, dtype=torch.bfloat16)
    tm = out.token_major()
    assert tm.visual_rows() is not None
    assert torch.equal(tm.visual_embeds, out.visual_embeds)
    assert torch.equal(tm.deepstack_visual_embeds, out.deepstack_visual_embeds)
    assert tm.token_major() is tm


def test_to_keeps_rows_token_major_and_converts_only_embeddings():
    out = random_output(5, 1, 12, 6, hidden=8).token_major()
    half = out.to(dtype=torch.bfloat16)
    assert half.visual_rows() is not None and half.visual_rows().dtype == torch.bfloat16
    assert torch.equal(half.deepstack_visual_embeds, out.deepstack_visual_embeds.to(torch.bfloat16))
    assert half.input_ids.dtype == torch.int64


def test_sender_plan_uses_token_major_rows_as_they_are_and_interleaves_others_once():
    out = random_output(6, 1, 40, 20, hidden=8).token_major()
    assert SendPlan.build(out).rows.data_ptr() == out.visual_rows().data_ptr()  # no copy
    level_major = random_output(6, 1, 40, 20, hidden=8)
    plan = SendPlan.build(level_major)
    assert torch.equal(plan.rows[:, 0], level_major.visual_embeds)
    assert torch.equal(plan.rows[:, 1:].transpose(0, 1), level_major.deepstack_visual_embeds)
