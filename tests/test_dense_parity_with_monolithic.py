"""Dense Qwen3-VL: the split halves (Qwen3VLEncoderOnly -> EncoderOutput -> Qwen3ForCausalLMWithDeepStack)
reproduce transformers' Qwen3VLForConditionalGeneration (and, from a text Qwen3 checkpoint,
Qwen3ForCausalLM): fp32 logits within 1e-5 and identical greedy tokens, tied and untied heads."""

import pytest
import torch
from _checkpoints import (PARITY_CASES, real_positions, reshard_by_half, text_checkpoint, vl_checkpoint,
                          with_token_types)
from transformers import Qwen3ForCausalLM, Qwen3VLForConditionalGeneration

from hf_qwen3_deepstack import Qwen3ForCausalLMWithDeepStack, Qwen3VLEncoderOnly
from hf_qwen3_deepstack.tiny_checkpoint.special_tokens import PAD_TOKEN_ID

NEW_TOKENS = 8
HEADS = ["untied", "tied"]

CASES = PARITY_CASES


def dense_checkpoint(root, head: str):
    return vl_checkpoint(root, f"dense-vl-{head}", family="dense", tie_word_embeddings=head == "tied")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.getbasetemp()
    loaded = {}
    for head in HEADS:
        path = dense_checkpoint(root, head)
        loaded[head] = (
            Qwen3VLForConditionalGeneration.from_pretrained(path).eval(),
            Qwen3VLEncoderOnly.from_pretrained(path).eval(),
            Qwen3ForCausalLMWithDeepStack.from_pretrained(path).eval(),
        )
    return loaded


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_qwen3_vl(models, head, case):
    ref, enc, lm = models[head]
    inputs = CASES[case]()
    with torch.no_grad():
        expected = ref(**with_token_types(inputs)).logits
        actual = lm(**enc.encode(**inputs).lm_inputs()).logits
    real = real_positions(inputs)
    assert actual.shape == expected.shape
    assert (actual[real] - expected[real]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("case", list(CASES))
def test_greedy_tokens_match_qwen3_vl(models, head, case):
    ref, enc, lm = models[head]
    inputs = CASES[case]()
    kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    expected = ref.generate(**with_token_types(inputs), **kwargs)
    actual = lm.generate(**enc.encode(**inputs).lm_inputs(), **kwargs)
    assert actual.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS
    assert torch.equal(actual, expected)


def test_deepstack_and_mrope_matter(models):
    """Guard against a vacuous oracle: dropping deepstack or using 1-D positions changes the logits."""
    _, enc, lm = models["untied"]
    inputs = enc.encode(**CASES["image_and_video"]()).lm_inputs()
    with torch.no_grad():
        full = lm(**inputs).logits
        no_deepstack = lm(**{k: v for k, v in inputs.items() if k != "deepstack_visual_embeds"}).logits
        one_d = lm(**{**inputs, "position_ids": None, "rope_deltas": None}).logits
    assert (full - no_deepstack).abs().max() > 1e-3
    assert (full - one_d).abs().max() > 1e-3


@pytest.mark.parametrize("head", HEADS)
def test_each_half_holds_exactly_its_subset_of_the_full_model(models, head):
    ref, enc, lm = models[head]
    ref_params = dict(ref.named_parameters())  # tied weights are listed once
    visual = {k.removeprefix("model."): v for k, v in ref_params.items() if k.startswith("model.visual.")}
    language = {k: v for k, v in ref_params.items() if not k.startswith("model.visual.")}
    assert sum(p.numel() for p in enc.parameters()) == sum(p.numel() for p in visual.values())
    assert sum(p.numel() for p in lm.parameters()) == sum(p.numel() for p in language.values())
    assert sum(p.numel() for p in enc.parameters()) + sum(p.numel() for p in lm.parameters()) == ref.num_parameters()
    for name, tensor in enc.named_parameters():
        assert torch.equal(tensor, visual[name]), name
    for name, tensor in lm.named_parameters():
        ref_name = name if name == "lm_head.weight" else name.replace("model.", "model.language_model.", 1)
        assert torch.equal(tensor, language[ref_name]), name
    tied = lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    assert tied == (head == "tied")
    assert "lm_head.weight" in language or head == "tied"


@pytest.fixture(scope="module", params=HEADS)
def text_models(request, tmp_path_factory):
    head = request.param
    path = text_checkpoint(tmp_path_factory.getbasetemp(), f"dense-text-{head}", family="dense",
                           tie_word_embeddings=head == "tied")
    return Qwen3ForCausalLM.from_pretrained(path).eval(), Qwen3ForCausalLMWithDeepStack.from_pretrained(path).eval()


def test_text_qwen3_checkpoint_matches_qwen3_for_causal_lm(text_models):
    ref, lm = text_models
    assert sum(p.numel() for p in lm.parameters()) == ref.num_parameters()
    ids = torch.tensor([[11, 57, 203, 9, 77, 310, 42, 5, 66]])
    with torch.no_grad():
        assert (lm(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max().item() <= 1e-5
    batch = torch.tensor([[PAD_TOKEN_ID, PAD_TOKEN_ID, 21, 33, 45], [17, 240, 99, 8, 150]])
    mask = (batch != PAD_TOKEN_ID).long()
    kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    expected = ref.generate(input_ids=batch, attention_mask=mask, **kwargs)
    assert torch.equal(lm.generate(input_ids=batch, attention_mask=mask, **kwargs), expected)


@pytest.mark.parametrize("half", ["vision", "language"])
def test_each_half_never_reads_the_other_halfs_shard(models, tmp_path_factory, tmp_path, half):
    """With the other half's shard deleted, each half still loads every own weight from the full checkpoint."""
    _, enc, lm = models["untied"]
    shards = reshard_by_half(dense_checkpoint(tmp_path_factory.getbasetemp(), "untied"), tmp_path / "halves")
    shards["language" if half == "vision" else "vision"].unlink()
    loaded = (Qwen3VLEncoderOnly if half == "vision" else Qwen3ForCausalLMWithDeepStack).from_pretrained(
        tmp_path / "halves")
    expected = enc if half == "vision" else lm
    for (name, a), b in zip(loaded.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(a, b), name
