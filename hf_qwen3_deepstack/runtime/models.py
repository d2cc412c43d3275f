"""Loading each half (only its own weights) and running it, per role."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown --dtype {name!r}; use auto, float32, bfloat16 or float16") from None


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


def build_prompt(processor, messages):
    """Exactly the prompt of the issue: the checkpoint's chat template, generation prompt on."""
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


class _FirstTokenTimer:
    """A generate() streamer that only records when the first new token arrives (= end of prefill)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_token_at: float | None = None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2 and self.first_token_at is None:  # call 1 is the prompt
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


@torch.inference_mode()
def generate(lm, enc_out, max_new_tokens: int, **generate_kwargs):
    """Greedy generation; returns (new token ids, prefill_s, decode_s)."""
    timer = _FirstTokenTimer()
    inputs = enc_out.lm_inputs()
    start = time.perf_counter()
    with torch.inference_mode():  # lighter than generate's own no_grad (measured: ~4% on the tiny model)
        out = lm.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=timer, **generate_kwargs)
    _sync(enc_out.input_ids.device)
    end = time.perf_counter()
    new = out[0, enc_out.seq_len:].tolist()
    first = timer.first_token_at or end
    return new, first - start, end - first


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def local_path(p: str) -> bool:
    return Path(p).exists()
