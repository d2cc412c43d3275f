"""Per-request generation parameters and the per-sequence token choice.

A request line (or an HTTP body) may carry `max_new_tokens`, `temperature`, `top_p`, `top_k`,
`seed` and `stop`. Greedy decoding (`temperature` absent or 0) is the default. Sampling uses
transformers' own logits warpers and a generator owned by the sequence, so a seeded request draws
the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_SEED = 2**63 - 1
MAX_TEMPERATURE = 100.0
PARAM_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop")


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # 1: off
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_request(cls, obj: dict[str, Any], default_max_new_tokens: int) -> "SamplingParams":
        """Read and check the parameters of a request; ValueError names the bad field and the allowed values."""
        mnt = obj.get("max_new_tokens")
        if mnt is None:
            mnt = default_max_new_tokens
        elif not _is_int(mnt) or mnt < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {mnt!r}")
        temperature = _number(obj, "temperature", 0.0, 0.0, MAX_TEMPERATURE)
        top_p = _number(obj, "top_p", 1.0, 0.0, 1.0)
        if top_p == 0.0:
            raise ValueError("top_p must be in (0, 1], got 0")
        top_k = obj.get("top_k")
        if top_k is None:
            top_k = 0
        elif not _is_int(top_k) or top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer (0: off), got {top_k!r}")
        seed = obj.get("seed")
        if seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
            raise ValueError(f"seed must be an integer in [0, 2**63-1], got {seed!r}")
        return cls(int(mnt), float(temperature), float(top_p), int(top_k), seed, _stop_strings(obj.get("stop")))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["stop"] = list(self.stop)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "SamplingParams":
        return cls.from_request(obj, default_max_new_tokens=1)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(obj: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = obj.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"{key} must be a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _stop_strings(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if (not isinstance(items, list) or len(items) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in items)):
        raise ValueError(f"stop must be a string or a list of at most {MAX_STOP_STRINGS} non-empty strings of at "
                         f"most {MAX_STOP_CHARS} characters, got {stop!r}")
    return tuple(items)


class TokenChooser:
    """Picks a sequence's next token from its logits row: argmax, or transformers' temperature ->
    top-k -> top-p warpers then a draw from the sequence's own generator."""

    def __init__(self, params: SamplingParams, device: torch.device):
        self.params = params
        self.warpers = []
        self.generator = None
        if params.greedy:
            return
        self.warpers.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            self.warpers.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(params.top_p))
        self.generator = torch.Generator(device=device)
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)

    def __call__(self, logits: torch.Tensor) -> int:  # logits (V,)
        if self.generator is None:
            return int(logits.argmax())
        scores = logits.float()[None]  # (1, V)
        for warp in self.warpers:
            scores = warp(None, scores)
        probs = scores.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def find_stop(text: str, stop: tuple[str, ...]) -> int | None:
    """Index in `text` where the earliest stop string starts, or None."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


# A new token can also rewrite up to this many characters before it: an incomplete UTF-8 sequence
# that decoded as U+FFFD turns into the character it completes.
_REWRITTEN_CHARS = 4


def stop_index(tokenizer, tokens: list[int], stop: tuple[str, ...]) -> int | None:
    """Where the earliest stop string starts in the decoded `tokens`, or None; called after each new
    token of a sequence that had no stop string before it. A newly complete stop string overlaps the
    newest token's text, so only a tail of tokens is decoded each step (constant work, not the whole
    text); the whole text is decoded only on a hit, to place the cut."""
    reach = max(map(len, stop)) + _REWRITTEN_CHARS
    tail_tokens = tokens[-reach:]
    tail = tokenizer.decode(tail_tokens, skip_special_tokens=True)
    newest = tokenizer.decode(tokens[-1:], skip_special_tokens=True)
    if len(tail_tokens) < len(tokens) and len(tail) < len(newest) + reach + _REWRITTEN_CHARS:
        tail = None  # the tail is mostly empty (special) tokens: it may not reach back far enough
    if tail is not None and find_stop(tail, stop) is None:
        return None
    return find_stop(tokenizer.decode(tokens, skip_special_tokens=True), stop)
