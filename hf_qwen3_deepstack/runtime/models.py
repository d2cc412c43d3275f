"""Loading each half (only its own weights) and running it, per role."""

from __future__ import annotations

import os

import torch

def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """--dtype: auto is bfloat16 on CUDA and float32 on CPU."""
    from hf_qwen3_deepstack.cli_values import parse_dtype

    return parse_dtype(name) or (torch.bfloat16 if device.type == "cuda" else torch.float32)


def resolve_device() -> torch.device:
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_model(model: str | None, seed: int = 0) -> str:
    """`--model` or the embedded tiny default (built once, cached)."""
    if model:
        return model
    from hf_qwen3_deepstack.tiny_checkpoint.build import default_tiny_checkpoint

    return str(default_tiny_checkpoint(seed=seed))


def max_positions(lm_model: str) -> int | None:
    """The language model's position limit, read from a full, text-only or language-repo config."""
    from hf_qwen3_deepstack.families import family_of

    try:
        cfg = family_of(lm_model, "lm").lm_config_class().from_pretrained(lm_model)
    except Exception:
        return None
    return getattr(cfg, "max_position_embeddings", None)


def load_encoder(model: str, dtype: torch.dtype, device: torch.device):
    """(processor, encoder) of either family, picked by the checkpoint's model_type."""
    from hf_qwen3_deepstack.families import family_of, register_auto_classes
    from hf_qwen3_deepstack.tiny_checkpoint.video import load_processor

    family = family_of(model, "encoder")
    register_auto_classes()  # our own repos load with our code: no "trust remote code?" prompt
    processor = load_processor(model)  # AutoProcessor, with a PIL video processor when torchvision is missing
    enc = family.encoder_class().from_pretrained(model, dtype=dtype).to(device).eval()
    return processor, enc


def load_lm(model: str, dtype: torch.dtype, device: torch.device):
    """(tokenizer, language model) of either family, picked by the checkpoint's model_type."""
    from transformers import AutoTokenizer

    from hf_qwen3_deepstack.families import family_of, register_auto_classes

    family = family_of(model, "lm")
    register_auto_classes()  # our own repos load with our code: no "trust remote code?" prompt
    tokenizer = AutoTokenizer.from_pretrained(model)
    lm = family.lm_class().from_pretrained(model, dtype=dtype).to(device).eval()
    return tokenizer, lm


def load_monolithic(model: str, dtype: torch.dtype, device: torch.device):
    """(processor, transformers' own full model) of a full Qwen3-VL or Qwen3-VL-MoE checkpoint: the
    reference the split reproduces."""
    from hf_qwen3_deepstack.families import family_for_model_type, read_model_type
    from hf_qwen3_deepstack.tiny_checkpoint.video import load_processor

    model_type = read_model_type(model)
    family = family_for_model_type(model_type, where=f"{model}/config.json")
    if model_type != family.vl_model_type:
        raise ValueError(
            f"{model} is a '{model_type}' checkpoint; transformers' monolithic model needs a full checkpoint "
            f"(model_type 'qwen3_vl_moe' or 'qwen3_vl')."
        )
    processor = load_processor(model)
    full = family.monolithic_class().from_pretrained(model, dtype=dtype).to(device).eval()
    return processor, full


def warm_up_encoder(processor, encoder) -> None:
    """One small image prompt through the processor and the vision tower before taking requests: the
    first call compiles the chat template and initialises the image path (about 30 ms on a CPU), which
    would otherwise land on the first request's latency."""
    from PIL import Image

    from .encoder_batching import encode_batch

    image = Image.new("RGB", (64, 64), (127, 127, 127))
    inputs = build_prompt(processor, [{"role": "user", "content": [{"type": "image", "image": image},
                                                                  {"type": "text", "text": "warm-up"}]}])
    with torch.inference_mode():
        encode_batch(encoder, [inputs.to(encoder.device)], None)


def build_prompt(processor, messages):
    """The checkpoint's chat template applied to `messages`, generation prompt on (as transformers does)."""
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
