"""Continuous batching and batched vision, in one process against transformers' monolithic model:
sequences that join a running batch at different steps, with different prompts and lengths, get
exactly the greedy tokens of `Qwen3VLMoeForConditionalGeneration.generate` for each request alone;
a seeded sampled request draws the same tokens alone and in a batch; batched vision gives each
request the EncoderOutput it gets alone."""

from __future__ import annotations

import pytest
import torch
from test_runtime_token_parity import parity_requests

from hf_qwen3_deepstack.runtime.batching import ContinuousBatch
from hf_qwen3_deepstack.runtime.encoder_batching import encode_batch
from hf_qwen3_deepstack.runtime.models import build_prompt, load_encoder, load_lm
from hf_qwen3_deepstack.runtime.sampling import SamplingParams

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tiny_checkpoint_dir, sample_images):
    from transformers import Qwen3VLMoeForConditionalGeneration

    rows = parity_requests(sample_images)
    rows += [dict(r, id=r["id"] + "-long", max_new_tokens=18) for r in rows]
    processor, encoder = load_encoder(str(tiny_checkpoint_dir), torch.float32, CPU)
    tokenizer, lm = load_lm(str(tiny_checkpoint_dir), torch.float32, CPU)
    mono = Qwen3VLMoeForConditionalGeneration.from_pretrained(tiny_checkpoint_dir, dtype=torch.float32).eval()
    prompts = [build_prompt(processor, r["messages"]) for r in rows]
    expected = []
    with torch.inference_mode():
        for r, p in zip(rows, prompts):
            out = mono.generate(**p, max_new_tokens=r.get("max_new_tokens", 7), do_sample=False)
            expected.append(out[0, p["input_ids"].shape[1]:].tolist())
        encoded = [encoder.encode(**p) for p in prompts]
    return rows, prompts, encoded, expected, encoder, tokenizer, lm


def drive(batch: ContinuousBatch, arrivals: dict[int, list[tuple[int, SamplingParams, object]]]) -> dict[int, list[int]]:
    """Admit arrivals[step] at each step boundary and decode until everything finished."""
    done, step = {}, 0
    last = max(arrivals)
    while step <= last or len(batch):
        joining = [(batch.new_sequence(i, params, out), out) for i, params, out in arrivals.get(step, [])]
        finished = batch.admit(joining) if joining else []
        if len(batch):
            finished += batch.step()
        done.update({s.index: s.tokens for s in finished})
        step += 1
    return done


def test_sequences_joining_a_running_batch_get_the_monolithic_greedy_tokens(setup):
    rows, _, encoded, expected, _, tokenizer, lm = setup
    batch = ContinuousBatch(lm, tokenizer, max_batch_size=8, max_batch_tokens=100_000)
    params = [SamplingParams(r.get("max_new_tokens", 7)) for r in rows]
    # staggered: two at step 0, then one or two every few steps while the others decode
    arrivals: dict[int, list] = {}
    for n, i in enumerate(range(len(rows))):
        arrivals.setdefault((n // 2) * 3, []).append((i, params[i], encoded[i]))
    got = drive(batch, arrivals)
    assert batch.stats.joined_running >= len(rows) - 2  # all but the first two joined while others decoded
    assert batch.stats.max_batch >= 3
    for i, r in enumerate(rows):
        assert got[i] == expected[i], (r["id"], got[i], expected[i])


def test_batch_respects_its_size_and_token_limits(setup):
    rows, _, encoded, _, _, tokenizer, lm = setup
    batch = ContinuousBatch(lm, tokenizer, max_batch_size=2, max_batch_tokens=100_000)
    seqs = [batch.new_sequence(i, SamplingParams(5), encoded[i]) for i in range(3)]
    assert batch.fits([], seqs[0]) and batch.fits([seqs[0]], seqs[1]) and not batch.fits(seqs[:2], seqs[2])
    tight = ContinuousBatch(lm, tokenizer, max_batch_size=8, max_batch_tokens=seqs[0].reserved_tokens)
    assert tight.fits([], seqs[1])  # alone, a sequence always fits
    assert not tight.fits([seqs[0]], seqs[1])


def test_the_padded_kv_cache_never_holds_more_token_slots_than_the_budget(setup):
    """One long request among short ones: with a left-padded cache every row is as long as the
    longest, so admission must count B x the longest, not the sum of the sequences' own lengths."""
    rows, _, encoded, _, _, tokenizer, lm = setup
    long_i = max(range(len(rows)), key=lambda i: encoded[i].seq_len)
    short_i = min(range(len(rows)), key=lambda i: encoded[i].seq_len)
    long_reserved = encoded[long_i].seq_len + 40
    short_reserved = encoded[short_i].seq_len + 3
    assert long_reserved > 2 * short_reserved  # the sum of lengths would let far more in
    budget = 3 * long_reserved
    batch = ContinuousBatch(lm, tokenizer, max_batch_size=16, max_batch_tokens=budget)
    queue = [(long_i, SamplingParams(40))] + [(short_i, SamplingParams(3))] * 8
    peak, most = 0, 0
    while queue or len(batch):
        joining: list = []
        while queue:
            seq = batch.new_sequence(queue[0][0], queue[0][1], encoded[queue[0][0]])
            if not batch.fits([s for s, _ in joining], seq):
                break
            joining.append((seq, encoded[queue.pop(0)[0]]))
        if joining:
            batch.admit(joining)
        most = max(most, len(batch))
        peak = max(peak, batch.cache_tokens)
        if len(batch):
            batch.step()
            peak = max(peak, batch.cache_tokens)
    assert most == 3  # the long one and two short ones, then more short ones as room frees up
    assert 0 < peak <= budget


def test_seeded_request_samples_the_same_tokens_alone_and_in_a_batch(setup):
    rows, _, encoded, _, _, tokenizer, lm = setup
    sampled = SamplingParams(12, temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    alone = drive(ContinuousBatch(lm, tokenizer, max_batch_size=8, max_batch_tokens=100_000),
                  {0: [(0, sampled, encoded[0])]})[0]
    crowd = {0: [(1, SamplingParams(9), encoded[1]), (2, SamplingParams(6, temperature=1.0, seed=7), encoded[2])],
             2: [(0, sampled, encoded[0]), (3, SamplingParams(4), encoded[3])]}
    together = drive(ContinuousBatch(lm, tokenizer, max_batch_size=8, max_batch_tokens=100_000), crowd)[0]
    assert together == alone
    other_seed = drive(ContinuousBatch(lm, tokenizer, max_batch_size=8, max_batch_tokens=100_000),
                       {0: [(0, SamplingParams(12, temperature=0.9, top_p=0.95, top_k=50, seed=99), encoded[0])]})[0]
    assert other_seed != alone  # the seed matters: sampling really happened


def test_stop_string_ends_the_sequence_and_is_cut_from_its_text(setup):
    rows, _, encoded, expected, _, tokenizer, lm = setup
    i = next(n for n, e in enumerate(expected) if len(e) >= 6)
    full = tokenizer.decode(expected[i], skip_special_tokens=True)
    stop = full[len(tokenizer.decode(expected[i][:3], skip_special_tokens=True)):][:2]
    assert stop.strip(), "the greedy text must have something to stop at"
    batch = ContinuousBatch(lm, tokenizer, max_batch_size=8, max_batch_tokens=100_000)
    seq = batch.new_sequence(i, SamplingParams(len(expected[i]), stop=(stop,)), encoded[i])
    finished = batch.admit([(seq, encoded[i])])
    while not finished:
        finished = batch.step()
    assert seq.finish_reason == "stop" and len(seq.tokens) < len(expected[i])
    assert seq.tokens == expected[i][:len(seq.tokens)]
    assert stop not in batch.text(seq) and full.startswith(batch.text(seq))


def test_batched_vision_gives_each_request_its_output_alone(setup):
    _, prompts, encoded, _, encoder, _, _ = setup
    with torch.inference_mode():
        together, _, _ = encode_batch(encoder, prompts)
    assert sum(o.num_visual_tokens > 0 for o in together) >= 3
    for alone, batched in zip(encoded, together):
        for name, t in alone.tensors().items():
            other = batched.tensors()[name]
            assert t.shape == other.shape and t.dtype == other.dtype, name
            if t.is_floating_point() and t.numel():
                assert (t - other).abs().max().item() <= 1e-5, name
            else:
                assert torch.equal(t, other), name


@pytest.mark.parametrize("bad,field", [
    ({"temperature": -0.5}, "temperature"), ({"temperature": "hot"}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"), ({"top_k": 2.5}, "top_k"), ({"seed": -3}, "seed"),
    ({"seed": True}, "seed"), ({"max_new_tokens": 0}, "max_new_tokens"), ({"stop": [""]}, "stop"),
    ({"stop": 5}, "stop"), ({"stop": ["x"] * 17}, "stop"), ({"temperature": float("nan")}, "temperature"),
])
def test_bad_generation_parameters_are_rejected_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams.from_request(bad, default_max_new_tokens=4)


def test_vision_cache_skips_the_tower_for_items_seen_again_with_the_same_outputs(setup):
    from hf_qwen3_deepstack.runtime.encoder_batching import VisionCache

    _, prompts, encoded, _, encoder, _, _ = setup
    cache = VisionCache(64 << 20)
    with torch.inference_mode():
        first, hits, misses = encode_batch(encoder, prompts[:3], cache)
        assert hits == 0 and misses == 4  # one image, two images, one video
        calls = []
        handle = encoder.visual.register_forward_hook(lambda *a: calls.append(1))
        again, hits, misses = encode_batch(encoder, [prompts[0], prompts[1]], cache)
        handle.remove()
    assert (hits, misses, calls) == (3, 0, [])  # the tower did not run
    for a, b in zip(again, first):
        for name, t in a.tensors().items():
            assert torch.equal(t, b.tensors()[name]), name
    tiny = VisionCache(max_bytes=1)  # too small for anything: never stores, never fails
    with torch.inference_mode():
        _, hits, misses = encode_batch(encoder, prompts[:1], tiny)
    assert (hits, misses, tiny.bytes) == (0, 1, 0)


def test_stop_strings_found_from_the_tail_match_a_search_of_the_whole_text(tiny_checkpoint_dir):
    """Checked after every token, as the batch does: the tail-only search finds the same stop, at the
    same place, as searching the whole decoded text, including stop strings made of multi-byte
    characters split across tokens and texts with special tokens in between."""
    from transformers import AutoTokenizer

    from hf_qwen3_deepstack.runtime.sampling import find_stop, stop_index

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint_dir)
    special = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text = ("The quick brown fox jumps over the lazy dog. " * 6 + "日本語のテキスト🙂🙂 and   spaces\n\nnew "
            "paragraph, END of text 終わり🙂.")
    ids = tokenizer.encode(text, add_special_tokens=False)
    with_specials = [t for n, t in enumerate(ids) for t in ((t, special) if n % 3 == 0 else (t,))]
    checked = 0
    for tokens in (ids, with_specials):
        for stop in (("END",), ("終わり",), ("🙂.",), ("語のテ", "lazy dog. The quick"), ("  spaces\n\nnew",),
                     ("quick",), ("not in the text",), ("🙂", "x" * 40)):
            for n in range(1, len(tokens) + 1):
                expected = find_stop(tokenizer.decode(tokens[:n], skip_special_tokens=True), stop)
                assert stop_index(tokenizer, tokens[:n], stop) == expected, (stop, n)
                checked += 1
                if expected is not None:
                    break
            else:
                assert stop == ("not in the text",), stop
    assert checked > 500


def test_prompts_prepared_together_equal_each_prompt_prepared_alone(setup, tiny_checkpoint_dir, tmp_path,
                                                                   monkeypatch):
    """The encoder's batched processor call: images, several images and text only go through one call
    (video prompts alone), each equal to its prompt prepared alone; a request whose image cannot be
    decoded fails alone, and the others are still prepared exactly."""
    from hf_qwen3_deepstack.runtime import prompt_batching
    from hf_qwen3_deepstack.tiny_checkpoint.video import load_processor

    rows, prompts, _, _, _, _, _ = setup
    processor = load_processor(tiny_checkpoint_dir)
    conversations = [r["messages"] for r in rows]
    kinds = {p["type"] for c in conversations for m in c if isinstance(m["content"], list) for p in m["content"]}
    assert kinds == {"image", "video", "text"} and sum("pixel_values" in p for p in prompts) >= 3
    alone_calls = []

    def counted(proc, conversation):
        alone_calls.append(conversation)
        return build_prompt(proc, conversation)

    monkeypatch.setattr(prompt_batching, "build_prompt", counted)

    def check(together):
        for alone, batched in zip(prompts, together):
            assert set(alone) == set(batched)
            for key in alone:
                assert alone[key].dtype == batched[key].dtype and torch.equal(alone[key], batched[key]), key

    check(prompt_batching.build_prompts(processor, conversations))
    assert alone_calls == [c for c in conversations if prompt_batching._has_video(c)]  # the rest went together

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    bad = [{"role": "user", "content": [{"type": "image", "image": str(broken)}, {"type": "text", "text": "?"}]}]
    together = prompt_batching.build_prompts(processor, conversations[:2] + [bad] + conversations[2:])
    assert isinstance(together.pop(2), Exception)
    check(together)
