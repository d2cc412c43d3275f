"""`encode(**processor.apply_chat_template(...))` works on exactly what the Qwen3-VL processor
returns, and the split halves generate the monolithic model's tokens for it."""

import pytest
import torch
from transformers import Qwen3VLMoeForConditionalGeneration

from hf_qwen3_deepstack import Qwen3MoeForCausalLMWithDeepStack, Qwen3VLMoeEncoderOnly
from hf_qwen3_deepstack.tiny_checkpoint.build import load_processor, write_sample_images, write_tiny_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("processor-inputs")
    path = write_tiny_checkpoint(root / "ckpt", seed=0)
    images = write_sample_images(root / "images")
    return (
        load_processor(path),
        Qwen3VLMoeForConditionalGeneration.from_pretrained(path).eval(),
        Qwen3VLMoeEncoderOnly.from_pretrained(path).eval(),
        Qwen3MoeForCausalLMWithDeepStack.from_pretrained(path).eval(),
        {p.stem: str(p) for p in images},
    )


def messages(images):
    return [
        {"role": "user", "content": [
            {"type": "image", "image": images["wide_96x64"]},
            {"type": "video", "video": [images[f"frame_{i}"] for i in range(4)]},
            {"type": "image", "image": images["landscape_128x96"]},
            {"type": "text", "text": "Compare the pictures and the clip."},
        ]},
    ]


def test_processor_output_encodes_and_generates_like_monolithic(setup):
    processor, ref, enc, lm = setup[:4]
    inputs = processor.apply_chat_template(messages(setup[4]), add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    out = enc.encode(**inputs)
    assert out.num_visual_tokens == int((inputs["mm_token_type_ids"] > 0).sum())
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(lm.generate(**out.lm_inputs(), **kwargs), ref.generate(**inputs, **kwargs))


def test_mm_token_type_ids_are_derived_when_absent(setup):
    processor, _, enc = setup[:3]
    inputs = processor.apply_chat_template(messages(setup[4]), add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    with_types = enc.encode(**inputs)
    without = enc.encode(**{k: v for k, v in inputs.items() if k != "mm_token_type_ids"})
    assert torch.equal(with_types.position_ids, without.position_ids)
    assert torch.equal(with_types.rope_deltas, without.rope_deltas)
    assert torch.equal(with_types.visual_embeds, without.visual_embeds)
