"""The split pipeline (encoder -> EncoderOutput -> language model) reproduces transformers'
Qwen3VLMoeForConditionalGeneration: logits within 1e-5 at real tokens and identical greedy tokens."""

import pytest
import torch
from _checkpoints import PARITY_CASES, real_positions, vl_checkpoint, with_token_types
from transformers import Qwen3VLMoeForConditionalGeneration

from hf_qwen3_deepstack import Qwen3MoeForCausalLMWithDeepStack, Qwen3VLMoeEncoderOnly

NEW_TOKENS = 10

CASES = PARITY_CASES


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = vl_checkpoint(tmp_path_factory.getbasetemp())
    ref = Qwen3VLMoeForConditionalGeneration.from_pretrained(path).eval()
    enc = Qwen3VLMoeEncoderOnly.from_pretrained(path).eval()
    lm = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(path).eval()
    return ref, enc, lm


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_monolithic(models, case):
    ref, enc, lm = models
    inputs = CASES[case]()
    with torch.no_grad():
        expected = ref(**with_token_types(inputs)).logits
        actual = lm(**enc.encode(**inputs).lm_inputs()).logits
    real = real_positions(inputs)
    assert actual.shape == expected.shape
    assert (actual[real] - expected[real]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_tokens_match_monolithic(models, case):
    ref, enc, lm = models
    inputs = CASES[case]()
    kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    expected = ref.generate(**with_token_types(inputs), **kwargs)
    actual = lm.generate(**enc.encode(**inputs).lm_inputs(), **kwargs)
    assert actual.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS  # prompt included, like transformers
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("case", ["image_and_video", "left_padded_batch_of_two"])
def test_full_sequence_deepstack_layout_gives_same_logits(models, case):
    """The seeds' layout: (B, S, K*H) (or (S, K*H) for one prompt), zeros at text rows."""
    _, enc, lm = models
    out = enc.encode(**CASES[case]())
    k, n, h = out.deepstack_visual_embeds.shape
    full = torch.zeros(out.batch_size, out.seq_len, k * h)
    full[out.visual_pos_mask()] = out.deepstack_visual_embeds.permute(1, 0, 2).reshape(n, k * h)
    inputs = out.lm_inputs()
    del inputs["deepstack_visual_embeds"]
    with torch.no_grad():
        expected = lm(**out.lm_inputs()).logits
        actual = lm(**inputs, input_deepstack_embeds=full).logits
        if out.batch_size == 1:
            assert torch.equal(lm(**inputs, input_deepstack_embeds=full[0]).logits, expected)
    assert torch.equal(actual, expected)


def test_deepstack_and_mrope_matter(models):
    """Guard against a vacuous oracle: dropping deepstack or using 1-D positions changes the logits."""
    _, enc, lm = models
    out = enc.encode(**CASES["one_image"]())
    inputs = out.lm_inputs()
    with torch.no_grad():
        full = lm(**inputs).logits
        no_deepstack = lm(**{k: v for k, v in inputs.items() if k != "deepstack_visual_embeds"}).logits
        one_d = lm(**{**inputs, "position_ids": None, "rope_deltas": None}).logits
    assert (full - no_deepstack).abs().max() > 1e-3
    assert (full - one_d).abs().max() > 1e-3


def test_decode_positions_continue_with_rope_deltas(models):
    """A manual prefill + one decode step without position_ids uses t + rope_delta, like generate."""
    _, enc, lm = models
    out = enc.encode(**CASES["image_and_video"]())
    assert out.rope_deltas.item() != 0
    with torch.no_grad():
        prefill = lm(**out.lm_inputs(), use_cache=True)
        next_token = prefill.logits[:, -1:].argmax(-1)
        step = lm(input_ids=next_token, past_key_values=prefill.past_key_values, rope_deltas=out.rope_deltas)
        ids = torch.cat([out.input_ids, next_token], dim=1)
        positions = torch.cat([out.position_ids, out.position_ids[..., -1:] + 1], dim=-1)
        full = lm(**{**out.lm_inputs(), "input_ids": ids, "position_ids": positions}).logits
    assert (step.logits[:, -1] - full[:, -1]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", ["image_and_video", "left_padded_batch_of_two"])
def test_encoder_rows_are_token_major_and_the_language_model_reads_them_like_contiguous_ones(models, case):
    """`encode` returns visual and deepstack rows as views of one (N, 1+K, H) buffer (one block per
    token range on the wire); the language model's logits do not depend on that layout."""
    _, enc, lm = models
    out = enc.encode(**CASES[case]())
    rows = out.visual_rows()
    assert rows is not None and rows.shape == (out.num_visual_tokens, 1 + out.num_deepstack_levels, out.hidden_size)
    inputs = out.lm_inputs()
    with torch.no_grad():
        strided = lm(**inputs).logits
        contiguous = lm(**{**inputs, "visual_embeds": out.visual_embeds.contiguous(),
                           "deepstack_visual_embeds": out.deepstack_visual_embeds.contiguous()}).logits
    assert torch.equal(strided, contiguous)
