"""Bad inputs fail with errors that name what is wrong and what was expected."""

import json

import pytest
import torch
from _checkpoints import PATCH_DIM, prompt, vl_checkpoint

from hf_qwen3_deepstack import (
    EncoderOutput,
    Qwen3MoeDeepStackConfig,
    Qwen3MoeForCausalLMWithDeepStack,
    Qwen3VLMoeEncoderOnly,
    Qwen3VLMoeEncoderOnlyConfig,
)
from hf_qwen3_deepstack.tiny_checkpoint.special_tokens import IMAGE_TOKEN_ID


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = vl_checkpoint(tmp_path_factory.getbasetemp())
    return Qwen3VLMoeEncoderOnly.from_pretrained(path).eval(), Qwen3MoeForCausalLMWithDeepStack.from_pretrained(path)


@pytest.fixture(scope="module")
def encoded(models):
    return models[0].encode(**prompt(images=[(1, 4, 6)], seed=31))


def test_placeholder_count_must_match_grid(models):
    inputs = prompt(images=[(1, 4, 6)])
    ids = inputs["input_ids"]
    first = int((ids[0] == IMAGE_TOKEN_ID).nonzero()[0])
    inputs["input_ids"] = torch.cat([ids[:, :first], ids[:, first + 1:]], dim=1)  # one placeholder short
    with pytest.raises(ValueError, match=r"image placeholder tokens do not match image_grid_thw.*\[5\].*\[6\]"):
        models[0].encode(**inputs)


def test_grid_must_match_pixel_values(models):
    inputs = prompt(images=[(1, 4, 6)])
    inputs["pixel_values"] = torch.randn(20, PATCH_DIM)
    with pytest.raises(ValueError, match=r"image_grid_thw \[\[1, 4, 6\]\] describes 24 patches.*\(20, 1536\)"):
        models[0].encode(**inputs)


def test_pixels_without_grid_are_rejected(models):
    with pytest.raises(ValueError, match="pixel_values and image_grid_thw must be given together"):
        models[0](pixel_values=torch.randn(16, PATCH_DIM))


def test_language_model_rejects_visual_row_count_mismatch(models, encoded):
    lm = models[1]
    inputs = encoded.lm_inputs()
    inputs["visual_embeds"] = inputs["visual_embeds"][:-1]
    inputs["deepstack_visual_embeds"] = inputs["deepstack_visual_embeds"][:, :-1]
    with pytest.raises(ValueError, match="6 image/video placeholder tokens in input_ids but 5 visual_embeds rows"):
        lm(**inputs)


def test_language_model_rejects_wrong_deepstack_level_count(models, encoded):
    inputs = encoded.lm_inputs()
    inputs["deepstack_visual_embeds"] = inputs["deepstack_visual_embeds"][:2]
    with pytest.raises(ValueError, match="K=2 levels, the model expects K=3"):
        models[1](**inputs)


def test_language_model_rejects_wrong_hidden_size(models, encoded):
    inputs = encoded.lm_inputs()
    inputs["visual_embeds"] = torch.randn(6, 32)
    with pytest.raises(ValueError, match=r"visual_embeds has shape \(6, 32\), expected \(N, H=64\)"):
        models[1](**inputs)
    inputs = encoded.lm_inputs()
    inputs["deepstack_visual_embeds"] = torch.randn(3, 6, 32)
    with pytest.raises(ValueError, match=r"deepstack_visual_embeds level has shape \(6, 32\), expected \(N=6, H=64\)"):
        models[1](**inputs)


def test_encoder_output_validate_names_the_field(encoded):
    with pytest.raises(ValueError, match=r"position_ids has shape \(1, \d+\), expected \(3, 1, \d+\)"):
        EncoderOutput(**{**encoded.__dict__, "position_ids": encoded.position_ids[0]}).validate()
    with pytest.raises(ValueError, match="K=3 deepstack levels, the language model expects K=4"):
        encoded.validate(num_deepstack_levels=4)
    with pytest.raises(ValueError, match="hidden size is 64, the language model expects H=128"):
        encoded.validate(hidden_size=128)
    with pytest.raises(ValueError, match="6 image/video placeholder tokens in input_ids but 5 visual embedding rows"):
        EncoderOutput(**{**encoded.__dict__, "visual_embeds": encoded.visual_embeds[:5],
                         "deepstack_visual_embeds": encoded.deepstack_visual_embeds[:, :5]}).validate()


@pytest.mark.parametrize("cls", [Qwen3VLMoeEncoderOnly, Qwen3MoeForCausalLMWithDeepStack])
def test_checkpoint_of_another_model_type_is_rejected(cls, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(ValueError, match="got model_type 'llama'"):
        cls.from_pretrained(tmp_path)


def test_encoder_rejects_text_only_qwen3_moe_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    with pytest.raises(ValueError, match=r"Qwen3-VL-MoE checkpoint \(model_type 'qwen3_vl_moe'\).*'qwen3_moe'"):
        Qwen3VLMoeEncoderOnlyConfig.from_pretrained(tmp_path)
    assert Qwen3MoeDeepStackConfig.from_pretrained(tmp_path).source_model_type == "qwen3_moe"
