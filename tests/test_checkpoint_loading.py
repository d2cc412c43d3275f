"""Each half loads from the full checkpoint in every layout, reads only its own tensors, and
round-trips through save_pretrained."""

import pytest
import torch
from _checkpoints import corrupt_tensor_data, prompt, reshard_by_half, text_checkpoint, vl_checkpoint, with_token_types
from transformers import Qwen3MoeForCausalLM, Qwen3VLMoeForConditionalGeneration

from hf_qwen3_deepstack import Qwen3MoeForCausalLMWithDeepStack, Qwen3VLMoeEncoderOnly

INPUTS = prompt(images=[(1, 4, 6)], videos=[(2, 4, 4)], seed=11)


def assert_same_logits(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same weights loaded along different paths: the grouped-mm expert kernel may round differently
    with buffer alignment, so allow 1e-6 (the parity bar is 1e-5) and require the same argmax."""
    assert (a - b).abs().max().item() <= 1e-6
    assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="module")
def reference(root):
    return Qwen3VLMoeForConditionalGeneration.from_pretrained(vl_checkpoint(root)).eval()


def split_logits(path, inputs=INPUTS):
    enc = Qwen3VLMoeEncoderOnly.from_pretrained(path).eval()
    lm = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(path).eval()
    with torch.no_grad():
        return lm(**enc.encode(**inputs).lm_inputs()).logits


def test_hub_and_transformers_expert_layouts_load_identically(root, reference):
    hub, tf = vl_checkpoint(root), vl_checkpoint(root, "vl-transformers", expert_layout="transformers")
    lm_hub = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(hub)
    lm_tf = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(tf)
    experts = lm_hub.model.layers[0].mlp.experts
    assert experts.gate_up_proj.shape == (8, 96, 64) and experts.down_proj.shape == (8, 64, 48)
    ref_experts = reference.model.language_model.layers[0].mlp.experts
    for (name, a), b in zip(lm_hub.state_dict().items(), lm_tf.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(experts.gate_up_proj, ref_experts.gate_up_proj)
    assert_same_logits(split_logits(hub), split_logits(tf))


def test_sharded_checkpoint_with_index_loads_every_weight(root, reference):
    path = vl_checkpoint(root)
    assert (path / "model.safetensors.index.json").exists() and len(list(path.glob("*.safetensors"))) > 3
    enc = Qwen3VLMoeEncoderOnly.from_pretrained(path)
    lm = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(path)
    ref_sd = reference.state_dict()
    for name, tensor in enc.state_dict().items():
        assert torch.equal(tensor, ref_sd[f"model.{name}"]), name
    for name, tensor in lm.state_dict().items():
        ref_name = name if name == "lm_head.weight" else name.replace("model.", "model.language_model.", 1)
        assert torch.equal(tensor, ref_sd[ref_name]), name


@pytest.mark.parametrize("tied", [False, True])
def test_tied_and_untied_lm_head(root, tied):
    path = vl_checkpoint(root, f"vl-tied-{tied}", tie_word_embeddings=tied)
    ref = Qwen3VLMoeForConditionalGeneration.from_pretrained(path).eval()
    lm = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(path)
    assert (lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()) == tied
    assert torch.equal(lm.lm_head.weight, ref.lm_head.weight)
    with torch.no_grad():
        expected = ref(**with_token_types(INPUTS)).logits
    assert (split_logits(path) - expected).abs().max() <= 1e-5


def test_each_half_holds_only_its_own_parameters(root):
    path = vl_checkpoint(root)
    enc = Qwen3VLMoeEncoderOnly.from_pretrained(path)
    lm = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(path)
    assert all(name.startswith("visual.") for name, _ in enc.named_parameters())
    assert not any(k in name for name, _ in enc.named_parameters() for k in ("embed_tokens", "lm_head", "layers."))
    assert all(name.startswith(("model.", "lm_head.")) for name, _ in lm.named_parameters())
    assert not any("visual" in name or "merger" in name for name, _ in lm.named_parameters())


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
@pytest.mark.parametrize("half", ["vision", "language"])
def test_loading_one_half_never_reads_the_other_halfs_shard(root, reference, half, damage, tmp_path):
    shards = reshard_by_half(vl_checkpoint(root), tmp_path / "halves")
    other = "language" if half == "vision" else "vision"
    if damage == "corrupt":
        corrupt_tensor_data(shards[other])  # any read of it would give NaN weights
    else:
        shards[other].unlink()  # never downloaded nor opened
    with torch.no_grad():
        if half == "vision":
            enc = Qwen3VLMoeEncoderOnly.from_pretrained(tmp_path / "halves")
            out = enc(pixel_values=INPUTS["pixel_values"], image_grid_thw=INPUTS["image_grid_thw"])
            expected = reference.model.get_image_features(
                INPUTS["pixel_values"], INPUTS["image_grid_thw"], return_dict=True
            )
            assert torch.equal(out.image_embeds[0], expected.pooler_output[0])
            assert torch.equal(out.image_deepstack_embeds[0][1], expected.deepstack_features[1][0])
        else:
            lm = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(tmp_path / "halves")
            ids = INPUTS["input_ids"][:, :6]
            assert_same_logits(lm(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_text_qwen3_moe_checkpoint_matches_qwen3_moe_for_causal_lm(root):
    path = text_checkpoint(root)
    ref = Qwen3MoeForCausalLM.from_pretrained(path).eval()
    lm = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(path).eval()
    assert ref.config.norm_topk_prob is False and lm.config.norm_topk_prob is False
    ids = torch.tensor([[5, 17, 99, 250, 3, 41, 77, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        assert (lm(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max() <= 1e-5
        real = mask.bool()
        diff = lm(input_ids=ids, attention_mask=mask).logits - ref(input_ids=ids, attention_mask=mask).logits
        assert diff[real].abs().max() <= 1e-5
    kwargs = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False)
    assert torch.equal(lm.generate(input_ids=ids, **kwargs), ref.generate(input_ids=ids, **kwargs))
    assert torch.equal(
        lm.generate(input_ids=ids, attention_mask=mask, **kwargs),
        ref.generate(input_ids=ids, attention_mask=mask, **kwargs),
    )


def test_norm_topk_prob_is_honoured_for_text_checkpoints(root):
    """The renormalising and non-renormalising routers give different results: the flag is not ignored."""
    path = text_checkpoint(root)
    plain = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(path).eval()
    renorm = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(path, norm_topk_prob=True).eval()
    ref_renorm = Qwen3MoeForCausalLM.from_pretrained(path, norm_topk_prob=True).eval()
    ids = torch.tensor([[5, 17, 99, 250, 3, 41]])
    with torch.no_grad():
        assert (plain(input_ids=ids).logits - renorm(input_ids=ids).logits).abs().max() > 1e-4
        assert (renorm(input_ids=ids).logits - ref_renorm(input_ids=ids).logits).abs().max() <= 1e-5


def test_own_saved_folders_reload_identically(root, tmp_path):
    path = vl_checkpoint(root)
    enc = Qwen3VLMoeEncoderOnly.from_pretrained(path).eval()
    lm = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(path).eval()
    enc.save_pretrained(tmp_path / "enc")
    lm.save_pretrained(tmp_path / "lm")
    enc2 = Qwen3VLMoeEncoderOnly.from_pretrained(tmp_path / "enc").eval()
    lm2 = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(tmp_path / "lm").eval()
    out, out2 = enc.encode(**INPUTS), enc2.encode(**INPUTS)
    assert torch.equal(out.visual_embeds, out2.visual_embeds)
    assert torch.equal(out.deepstack_visual_embeds, out2.deepstack_visual_embeds)
    with torch.no_grad():
        assert_same_logits(lm(**out.lm_inputs()).logits, lm2(**out2.lm_inputs()).logits)


def test_text_checkpoint_round_trips_through_save_pretrained(root, tmp_path):
    lm = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(text_checkpoint(root)).eval()
    lm.save_pretrained(tmp_path / "lm")
    lm2 = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(tmp_path / "lm").eval()
    ids = torch.tensor([[5, 17, 99, 250]])
    with torch.no_grad():
        assert_same_logits(lm(input_ids=ids).logits, lm2(input_ids=ids).logits)


def test_dtype_and_device_map_auto(root):
    path = vl_checkpoint(root)
    lm = Qwen3MoeForCausalLMWithDeepStack.from_pretrained(path, dtype=torch.bfloat16, device_map="auto")
    enc = Qwen3VLMoeEncoderOnly.from_pretrained(path, dtype=torch.bfloat16, device_map="auto")
    assert lm.dtype == torch.bfloat16 and enc.dtype == torch.bfloat16
    out = enc.encode(**INPUTS)
    assert out.visual_embeds.dtype == torch.bfloat16
    tokens = lm.generate(**out.lm_inputs(), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert tokens.shape[1] == INPUTS["input_ids"].shape[1] + 4
