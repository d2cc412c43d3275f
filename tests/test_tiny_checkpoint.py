"""The complete tiny checkpoint: transformers' own classes load it, the processor handles
images / videos / text without torchvision, generation is deterministic."""

import hashlib
import json
import pytest
import torch

from hf_qwen3_deepstack.tiny_checkpoint import video
from hf_qwen3_deepstack.tiny_checkpoint.build import default_tiny_checkpoint, write_sample_images, write_tiny_checkpoint
from hf_qwen3_deepstack.tiny_checkpoint.processor import CHAT_TEMPLATE
from hf_qwen3_deepstack.tiny_checkpoint.special_tokens import SPECIAL_TOKENS, TINY_VOCAB_SIZE


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "seed0", seed=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_sample_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def processor(ckpt):
    from transformers import AutoProcessor

    video.install()  # no-op when torchvision is installed
    return AutoProcessor.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def model(ckpt):
    from transformers import Qwen3VLMoeForConditionalGeneration

    return Qwen3VLMoeForConditionalGeneration.from_pretrained(ckpt).eval()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _chat(processor, content, **kwargs):
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt", **kwargs)


def _assert_placeholders(inputs, n_images, n_videos):
    ids = inputs["input_ids"][0]
    mm = inputs["mm_token_type_ids"][0]
    assert ids.shape == inputs["attention_mask"][0].shape == mm.shape
    n_image_tokens = int((ids == SPECIAL_TOKENS["<|image_pad|>"]).sum())
    n_video_tokens = int((ids == SPECIAL_TOKENS["<|video_pad|>"]).sum())
    if n_images:
        grids = inputs["image_grid_thw"]
        assert grids.shape == (n_images, 3)
        assert n_image_tokens == int(grids.prod(-1).sum()) // 4
        assert inputs["pixel_values"].shape == (int(grids.prod(-1).sum()), 3 * 2 * 16 * 16)
    else:
        assert n_image_tokens == 0 and "pixel_values" not in inputs
    if n_videos:
        grids = inputs["video_grid_thw"]
        assert grids.shape == (n_videos, 3)
        assert n_video_tokens == int(grids.prod(-1).sum()) // 4
        assert inputs["pixel_values_videos"].shape == (int(grids.prod(-1).sum()), 3 * 2 * 16 * 16)
    else:
        assert n_video_tokens == 0 and "pixel_values_videos" not in inputs
    assert int((mm == 1).sum()) == n_image_tokens and int((mm == 2).sum()) == n_video_tokens


def test_files_and_special_tokens(ckpt, processor):
    names = {p.name for p in ckpt.iterdir()}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
                 "generation_config.json"):
        assert name in names
    assert type(processor).__name__ == "Qwen3VLProcessor"
    tok = processor.tokenizer
    for token, token_id in SPECIAL_TOKENS.items():
        assert tok.convert_tokens_to_ids(token) == token_id
        assert tok.encode(token, add_special_tokens=False) == [token_id]
    assert len(tok) <= TINY_VOCAB_SIZE
    assert processor.image_token_id == SPECIAL_TOKENS["<|image_pad|>"]
    assert processor.video_token_id == SPECIAL_TOKENS["<|video_pad|>"]
    assert processor.vision_start_token_id == SPECIAL_TOKENS["<|vision_start|>"]
    assert tok.eos_token_id == SPECIAL_TOKENS["<|im_end|>"] and tok.pad_token_id == SPECIAL_TOKENS["<|endoftext|>"]
    gen = json.loads((ckpt / "generation_config.json").read_text())
    assert gen["do_sample"] is False and gen["eos_token_id"] == 482 and gen["pad_token_id"] == 480
    config = json.loads((ckpt / "config.json").read_text())
    assert config["image_token_id"] == 485 and config["video_token_id"] == 486


def test_chat_template_round_trip(processor):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "text", "text": "Hello! What colour is the sky?"}]},
        {"role": "assistant", "content": "The sky is blue."},
        {"role": "user", "content": "Thank you."},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello! What colour is the sky?<|im_end|>\n"
        "<|im_start|>assistant\nThe sky is blue.<|im_end|>\n"
        "<|im_start|>user\nThank you.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.decode(ids) == text
    assert processor.apply_chat_template(messages[:2], tokenize=False).endswith("sky?<|im_end|>\n")
    media = [{"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "video", "video": ["b.png"]},
                                          {"type": "text", "text": "Hi"}]}]
    assert processor.apply_chat_template(media, tokenize=False, add_vision_id=True) == (
        "<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>"
        "Video 1: <|vision_start|><|video_pad|><|vision_end|>Hi<|im_end|>\n"
    )
    assert processor.chat_template == CHAT_TEMPLATE


def test_text_only_prompt(processor):
    inputs = _chat(processor, [{"type": "text", "text": "Count the apples."}])
    _assert_placeholders(inputs, 0, 0)


def test_image_prompts(processor, images):
    square, wide, landscape = images[:3]
    one = _chat(processor, [{"type": "image", "image": str(square)}, {"type": "text", "text": "Describe it."}])
    _assert_placeholders(one, 1, 0)
    assert one["image_grid_thw"].tolist() == [[1, 4, 4]]  # 64x64 -> 4 visual tokens
    two = _chat(processor, [{"type": "image", "image": str(wide)}, {"type": "image", "image": str(landscape)},
                            {"type": "text", "text": "Compare them."}])
    _assert_placeholders(two, 2, 0)
    assert two["image_grid_thw"].tolist() == [[1, 4, 6], [1, 6, 8]]
    # a big photo stays small: at most 64 visual tokens
    from PIL import Image

    big = Image.new("RGB", (1024, 768), (10, 200, 30))
    inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[big], return_tensors="pt")
    assert int(inputs["image_grid_thw"].prod()) // 4 <= 64


def test_video_prompt(processor, images):
    frames = [str(p) for p in images[3:]]
    inputs = _chat(processor, [{"type": "video", "video": frames}, {"type": "text", "text": "What happens?"}])
    _assert_placeholders(inputs, 0, 1)
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 4]]
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.count("seconds>") == 2  # one timestamp per temporal group, as Qwen3-VL does
    mixed = _chat(processor, [{"type": "image", "image": str(images[0])}, {"type": "video", "video": frames},
                              {"type": "text", "text": "Both."}])
    _assert_placeholders(mixed, 1, 1)


def test_video_patches_match_image_patches(processor, images):
    """A 2-frame video of one 64x64 frame (no resize needed) must patchify exactly like the image."""
    from PIL import Image

    frame = Image.open(images[0]).convert("RGB")
    img = processor.image_processor(images=[frame], return_tensors="pt")
    vid = processor.video_processor(videos=[[frame, frame]], return_tensors="pt", do_sample_frames=False)
    assert vid["video_grid_thw"].tolist() == img["image_grid_thw"].tolist() == [[1, 4, 4]]
    torch.testing.assert_close(vid["pixel_values_videos"], img["pixel_values"], rtol=0, atol=1e-6)


def test_generate_deterministic(ckpt, model, processor, images, tmp_path):
    frames = [str(p) for p in images[3:]]
    inputs = _chat(processor, [{"type": "image", "image": str(images[1])}, {"type": "video", "video": frames},
                               {"type": "text", "text": "Describe."}])
    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=8)
        second = model.generate(**inputs, max_new_tokens=8)
    assert first.shape[1] <= inputs["input_ids"].shape[1] + 8
    assert torch.equal(first, second)

    again = write_tiny_checkpoint(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert _sha(again / name) == _sha(ckpt / name), name
    other = write_tiny_checkpoint(tmp_path / "other", seed=1)
    assert _sha(other / "model.safetensors") != _sha(ckpt / "model.safetensors")
    assert _sha(other / "tokenizer.json") == _sha(ckpt / "tokenizer.json")

    from transformers import Qwen3VLMoeForConditionalGeneration

    other_model = Qwen3VLMoeForConditionalGeneration.from_pretrained(other).eval()
    with torch.no_grad():
        assert not torch.equal(model(**inputs).logits, other_model(**inputs).logits)


def test_default_checkpoint_cache_and_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_QWEN3_DEEPSTACK_CACHE", str(tmp_path / "cache"))
    first = default_tiny_checkpoint(seed=3)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert default_tiny_checkpoint(seed=3) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # built once
    assert first.parent == tmp_path / "cache"

    from hf_qwen3_deepstack.cli import main

    assert main(["tiny-checkpoint", str(tmp_path / "cli"), "--seed", "3"]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert _sha(tmp_path / "cli" / "model.safetensors") == _sha(first / "model.safetensors")
