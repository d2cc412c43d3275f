"""Check 2, split parity: the encoder half + the language half reproduce transformers' monolithic
model, per prompt (image, video, text only), on each device and dtype available.

fp32: max |Δlogit| over the prompt <= 1e-5 and identical greedy tokens. bf16 (CUDA): identical greedy
tokens and max |Δlogit| <= 2 % of the largest reference logit (about two bf16 rounding steps)."""

from __future__ import annotations

import time

import torch

from .context import CheckContext
from .inputs import NEW_TOKENS
from .report import CheckResult, Status

FP32_MAX_ABS_LOGIT_DIFF = 1e-5
BF16_MAX_REL_LOGIT_DIFF = 2e-2


def lanes(device: torch.device) -> list[tuple[torch.device, torch.dtype]]:
    """fp32 on CPU always; fp32 and bf16 on the GPU when checking CUDA."""
    out = [(torch.device("cpu"), torch.float32)]
    if device.type == "cuda":
        out += [(device, torch.float32), (device, torch.bfloat16)]
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def _first_difference(expected: list[int], actual: list[int]) -> str:
    for i, (e, a) in enumerate(zip(expected, actual)):
        if e != a:
            return f"greedy tokens differ at new token {i}: expected {e}, got {a}"
    return f"greedy token counts differ: expected {len(expected)}, got {len(actual)}"


def check_prompt(ctx: CheckContext, name: str, device: torch.device, dtype: torch.dtype) -> CheckResult:
    t0 = time.perf_counter()
    reference = ctx.monolithic(device, dtype)
    encoder, lm = ctx.split(device, dtype)
    inputs = {k: v.to(device) for k, v in ctx.prompt_inputs(name).items()}
    with torch.inference_mode():
        expected_logits = reference(**inputs).logits.float()
        encoded = encoder.encode(**inputs)
        actual_logits = lm(**encoded.lm_inputs()).logits.float()
        generated = lm.generate(**encoded.lm_inputs(), max_new_tokens=NEW_TOKENS, do_sample=False)
    expected_tokens = ctx.monolithic_tokens(name, device, dtype)
    actual_tokens = generated[0, inputs["input_ids"].shape[1]:].tolist()

    diff = (actual_logits - expected_logits).abs().max().item()
    if dtype == torch.float32:
        bound, bound_text = FP32_MAX_ABS_LOGIT_DIFF, f"{FP32_MAX_ABS_LOGIT_DIFF:.0e}"
    else:
        scale = expected_logits.abs().max().item()
        bound = BF16_MAX_REL_LOGIT_DIFF * max(scale, 1.0)
        bound_text = f"{bound:.2g} (2% of max |logit| {scale:.3g})"
    logits_ok = diff <= bound
    tokens_ok = actual_tokens == expected_tokens
    same = sum(a == e for a, e in zip(actual_tokens, expected_tokens))
    figure = (f"max |Δlogit| {diff:.1e} {'<=' if logits_ok else '>'} {bound_text}; "
              f"{same}/{len(expected_tokens)} greedy tokens equal")
    if not tokens_ok:
        figure += f" ({_first_difference(expected_tokens, actual_tokens)})"
    return CheckResult(
        group="parity",
        name=f"{_dtype_name(dtype)} {device.type}: {name}",
        status=Status.PASS if logits_ok and tokens_ok else Status.FAIL,
        figure=figure,
        values={"max_abs_logit_diff": diff, "logit_bound": bound, "tokens_equal": tokens_ok,
                "expected_tokens": expected_tokens, "actual_tokens": actual_tokens,
                "prompt_tokens": int(inputs["input_ids"].shape[1]),
                "visual_tokens": int(encoded.num_visual_tokens)},
        seconds=time.perf_counter() - t0,
    )


def run(ctx: CheckContext) -> list[CheckResult]:
    return [check_prompt(ctx, name, device, dtype)
            for device, dtype in lanes(ctx.device) for name in ctx.messages()]
