"""Continuous batching on a language rank, built on the model's own forward and transformers'
`DynamicCache`.

Sequences join the running batch at a decode-step boundary (a batched, left-padded prefill of the
newcomers whose cache is then merged into the running one) and leave as soon as they finish.
Each sequence keeps its own M-RoPE continuation (`rope_delta`), its own visual and deepstack rows
(placed at its own placeholders during its prefill) and its own sampling state.

Shape legend: B running sequences, L cached positions (left padded), S prompt length (padded),
N visual tokens of the newcomers, K deepstack levels, H hidden size, V vocabulary, kv/d the cache's
heads and head size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from hf_qwen3_deepstack.encoder_output import EncoderOutput, placeholder_mask

from .sampling import SamplingParams, TokenChooser, stop_index


@dataclass
class Sequence:
    index: int  # the request's index in the job
    params: SamplingParams
    prompt_len: int
    rope_delta: int
    chooser: TokenChooser
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    text_end: int | None = None  # where a stop string starts in the decoded text
    origin: Any = None  # the caller's record of where the request came from
    admitted_at: float = 0.0  # wall clock (time.time()) when its prefill began
    first_token_at: float = 0.0  # wall clock
    prefill_s: float = 0.0

    @property
    def reserved_tokens(self) -> int:
        return self.prompt_len + self.params.max_new_tokens


@dataclass
class BatchStats:
    steps: int = 0  # decode steps
    step_seqs: int = 0  # sum of batch sizes over decode steps
    prefills: int = 0
    admitted: int = 0
    joined_running: int = 0  # sequences admitted while others were decoding
    max_batch: int = 0
    busy_s: float = 0.0  # time spent in prefill and decode
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (time, batch size) at each change

    def to_json(self) -> dict:
        return {
            "steps": self.steps, "prefills": self.prefills, "admitted": self.admitted,
            "joined_running": self.joined_running, "max_batch": self.max_batch, "busy_s": round(self.busy_s, 6),
            "mean_batch": self.step_seqs / self.steps if self.steps else 0.0,
            "timeline": [(round(t, 6), b) for t, b in self.timeline],
        }


class ContinuousBatch:
    def __init__(self, model, tokenizer, *, max_batch_size: int, max_batch_tokens: int):
        self.model = model
        self.tokenizer = tokenizer
        self.device = model.device
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.eos = eos_ids(model)
        self.seqs: list[Sequence] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (B, L) long, 0 at left padding
        self.stats = BatchStats()
        self._t0 = time.perf_counter()

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def cache_tokens(self) -> int:
        """Token slots per layer the KV cache holds now: B rows of the (left-padded) longest."""
        return 0 if self.mask is None else int(self.mask.numel())

    def fits(self, pending: list[Sequence], seq: Sequence) -> bool:
        """Whether `seq` may join now, with `pending` already chosen to join. A sequence alone always fits.
        The cache is left-padded, so every row is as long as the longest sequence: B sequences can
        come to hold B x (the largest prompt + max_new_tokens) token slots, and that is what must fit."""
        joining = [*self.seqs, *pending, seq]
        if len(joining) == 1:
            return True
        slots = len(joining) * max(s.reserved_tokens for s in joining)
        return len(joining) <= self.max_batch_size and slots <= self.max_batch_tokens

    def new_sequence(self, index: int, params: SamplingParams, out: EncoderOutput, origin: Any = None) -> Sequence:
        if out.batch_size != 1:
            raise ValueError(f"a request's EncoderOutput must hold one sequence, got batch size {out.batch_size}")
        return Sequence(index=index, params=params, prompt_len=out.seq_len, rope_delta=int(out.rope_deltas[0, 0]),
                        chooser=TokenChooser(params, self.device), origin=origin)

    # --- prefill: newcomers as one left-padded batch, then merged into the running cache ------------
    @torch.inference_mode()
    def admit(self, items: list[tuple[Sequence, EncoderOutput]]) -> list[Sequence]:
        """Prefill `items` and add them to the batch; returns those already finished (one token)."""
        t0, wall = time.perf_counter(), time.time()
        running = len(self.seqs)
        inputs = _left_padded(items, self.device)
        cache = DynamicCache(config=self.model.config)
        logits = self.model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        self._merge(cache, inputs["attention_mask"])
        now = time.perf_counter()
        for (seq, _), row in zip(items, logits):
            seq.admitted_at, seq.prefill_s = wall, now - t0
            seq.first_token_at = wall + seq.prefill_s
            self._append(seq, seq.chooser(row))
        self.seqs.extend(seq for seq, _ in items)
        self.stats.prefills += 1
        self.stats.admitted += len(items)
        self.stats.joined_running += len(items) if running else 0
        self.stats.busy_s += now - t0
        return self._retire()

    def _merge(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        length = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_pad_left(old.keys, length, dim=2), _pad_left(new.keys, length, dim=2)])
            old.values = torch.cat([_pad_left(old.values, length, dim=2), _pad_left(new.values, length, dim=2)])
        self.mask = torch.cat([_pad_left(self.mask, length, dim=1), _pad_left(mask, length, dim=1)])

    # --- decode: one token for every running sequence -----------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """One decode step; returns the sequences that finished (already removed from the batch)."""
        cancelled = self._retire()
        if not self.seqs:
            return cancelled
        t0 = time.perf_counter()
        ids = torch.tensor([[s.tokens[-1]] for s in self.seqs], device=self.device)  # (B, 1)
        # the fed token sits at prompt_len + generated - 1; its M-RoPE position adds the sequence's delta
        pos = torch.tensor([s.prompt_len + len(s.tokens) - 1 + s.rope_delta for s in self.seqs], device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.seqs), 1)], dim=1)  # (B, L+1)
        logits = self.model(input_ids=ids, attention_mask=self.mask, position_ids=pos.view(1, -1, 1).expand(3, -1, -1),
                            past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1]  # (B, V)
        for seq, row in zip(self.seqs, logits):
            self._append(seq, seq.chooser(row))
        self.stats.steps += 1
        self.stats.step_seqs += len(self.seqs)
        self.stats.busy_s += time.perf_counter() - t0
        return cancelled + self._retire()

    def _append(self, seq: Sequence, token: int) -> None:
        seq.tokens.append(token)
        if token in self.eos:
            seq.finish_reason = "stop"
        elif seq.params.stop and (cut := stop_index(self.tokenizer, seq.tokens, seq.params.stop)) is not None:
            seq.finish_reason, seq.text_end = "stop", cut
        elif len(seq.tokens) >= seq.params.max_new_tokens:
            seq.finish_reason = "length"

    def _retire(self) -> list[Sequence]:
        done = [s for s in self.seqs if s.finish_reason]
        if done:
            keep = [i for i, s in enumerate(self.seqs) if not s.finish_reason]
            self.seqs = [self.seqs[i] for i in keep]
            if not keep:
                self.cache = self.mask = None
            else:
                idx = torch.tensor(keep, device=self.device)
                self.mask = self.mask[idx]
                first = int(self.mask.any(0).long().argmax())  # columns before are padding for every row
                self.mask = self.mask[:, first:]
                for layer in self.cache.layers:
                    layer.keys = layer.keys[idx, :, first:]
                    layer.values = layer.values[idx, :, first:]
        size = len(self.seqs)
        self.stats.max_batch = max(self.stats.max_batch, size)
        if not self.stats.timeline or self.stats.timeline[-1][1] != size:
            self.stats.timeline.append((time.perf_counter() - self._t0, size))
        return done

    def running(self, index: int) -> Sequence | None:
        return next((s for s in self.seqs if s.index == index), None)

    def cancel(self, index: int) -> bool:
        """Mark a running sequence finished ("cancelled"); the next step retires it. False if not running."""
        seq = self.running(index)
        if seq is None:
            return False
        seq.finish_reason = "cancelled"
        return True

    def text(self, seq: Sequence, strip: bool = True) -> str:
        text = self.tokenizer.decode(seq.tokens, skip_special_tokens=True)
        return text[: seq.text_end] if strip and seq.text_end is not None else text

    def abort_all(self) -> list[Sequence]:
        """Drop every running sequence (after a failed step): they get error results."""
        seqs, self.seqs, self.cache, self.mask = self.seqs, [], None, None
        return seqs


def eos_ids(model) -> set[int]:
    """The token ids that end generation, as `generate` reads them."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = model.config.get_text_config().eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _pad_left(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _left_padded(items: list[tuple[Sequence, EncoderOutput]], device: torch.device) -> dict:
    """One forward's inputs for several single-sequence EncoderOutputs, left padded to the longest."""
    outs = [o for _, o in items]
    b, s = len(outs), max(o.seq_len for o in outs)
    ids = torch.zeros(b, s, dtype=torch.long, device=device)
    mask = torch.zeros(b, s, dtype=torch.long, device=device)
    pos = torch.ones(3, b, s, dtype=torch.long, device=device)
    visual = torch.zeros(b, s, dtype=torch.bool, device=device)
    for i, o in enumerate(outs):
        n = o.seq_len
        ids[i, s - n:] = o.input_ids[0]
        mask[i, s - n:] = 1 if o.attention_mask is None else o.attention_mask[0]
        pos[:, i, s - n:] = o.position_ids[:, 0]
        placeholders = placeholder_mask(o.input_ids[0], o.image_token_id, o.video_token_id)
        if placeholders is not None:
            visual[i, s - n:] = placeholders
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    with_rows = [o for o in outs if o.num_visual_tokens]
    if with_rows:
        inputs["visual_pos_masks"] = visual
        inputs["visual_embeds"] = torch.cat([o.visual_embeds for o in with_rows]).to(device)
        inputs["deepstack_visual_embeds"] = torch.cat([o.deepstack_visual_embeds for o in with_rows], dim=1).to(device)
    return inputs
