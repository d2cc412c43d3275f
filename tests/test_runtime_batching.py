"""The runtime's batching and dispatch, end to end on gloo: requests that arrive while others
decode join the running batch and still get transformers' monolithic greedy tokens; skewed work
on 1E+2L goes to the replica with free capacity, so both work and neither sits on a queue."""

from __future__ import annotations

import json

import pytest
import torch
from test_runtime_token_parity import monolithic_greedy, read_jsonl, run_runtime, runtime_env, write_jsonl


def _msg(*items):
    return [{"role": "user", "content": list(items)}]


@pytest.fixture(scope="module")
def staggered(tiny_checkpoint_dir, sample_images, tmp_path_factory):
    """Mixed requests (image, two images, video, text) of different lengths, and their monolithic tokens."""
    from transformers import Qwen3VLMoeForConditionalGeneration

    from hf_qwen3_deepstack.tiny_checkpoint.video import load_processor

    square, wide, landscape, *frames = sample_images
    kinds = [
        _msg({"type": "image", "image": str(square)}, {"type": "text", "text": "What is it?"}),
        _msg({"type": "image", "image": str(wide)}, {"type": "image", "image": str(landscape)},
             {"type": "text", "text": "Compare these two pictures, please."}),
        _msg({"type": "video", "video": [str(f) for f in frames]}, {"type": "text", "text": "What happens?"}),
        _msg({"type": "text", "text": "Tell me about routers and switches."}),
    ]
    rows = [{"id": f"r{i}", "messages": kinds[i % 4], "max_new_tokens": [48, 30, 40, 24][i % 4] + i}
            for i in range(8)]
    processor = load_processor(tiny_checkpoint_dir)
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(tiny_checkpoint_dir, dtype=torch.float32).eval()
    expected = {r["id"]: monolithic_greedy(model, processor, r["messages"], r["max_new_tokens"])[0] for r in rows}
    return write_jsonl(tmp_path_factory.mktemp("staggered") / "requests.jsonl", rows), expected


@pytest.mark.parametrize("e,l", [(1, 1), (2, 1), (1, 2)], ids=["1E+1L", "2E+1L", "1E+2L"])
def test_requests_joining_a_running_batch_keep_monolithic_tokens(tiny_checkpoint_dir, staggered, tmp_path, e, l):
    req_file, expected = staggered
    env = runtime_env()
    # each encoder sends one request per vision call, 0.04 s apart: arrivals are staggered while the
    # others decode (24-55 new tokens each, at several ms per step)
    env["HF_QWEN3_DEEPSTACK_FAULT"] = ",".join(f"delay:{rank}:0.04" for rank in range(e))
    summary_file = tmp_path / "summary.json"
    proc = run_runtime("run", e, l, tiny_checkpoint_dir, req_file, tmp_path / "out.jsonl", "--encoder-batch-requests",
                       "1", "--summary-json", str(summary_file), env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert sorted(results) == sorted(expected)
    for rid, want in expected.items():
        assert results[rid].get("token_ids") == want, (rid, results[rid], want)
    summary = json.loads(summary_file.read_text())
    lm_stats = [s for s in summary["ranks"].values() if "steps" in s]
    assert len(lm_stats) == l
    assert sum(s["joined_running"] for s in lm_stats) >= 1  # somebody joined a batch that was decoding
    assert max(s["max_batch"] for s in lm_stats) >= 2 and summary["mean_batch_size"] > 1.0
    assert summary["timings"]["ttft_s"]["p50"] > 0 and summary["tokens_per_s"] > 0


def test_skewed_work_goes_to_the_replica_with_free_capacity(tiny_checkpoint_dir, sample_images, tmp_path):
    square = sample_images[0]
    rows = [{"id": "long", "messages": _msg({"type": "text", "text": "Write a long story."}), "max_new_tokens": 60}]
    rows += [{"id": f"short-{i}", "messages": _msg({"type": "image", "image": str(square)},
                                                   {"type": "text", "text": f"Name {i}."}), "max_new_tokens": 2}
             for i in range(8)]
    req_file = write_jsonl(tmp_path / "requests.jsonl", rows)
    summary_file = tmp_path / "summary.json"
    proc = run_runtime("run", 1, 2, tiny_checkpoint_dir, req_file, tmp_path / "out.jsonl", "--summary-json",
                       str(summary_file))
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert len(results) == 9 and not any("error" in r for r in results.values())
    long_lm = results["long"]["lm_rank"]
    per_lm = {lm: sum(r["lm_rank"] == lm for r in results.values()) for lm in (1, 2)}
    # static round robin would give the long request's replica 4 of the shorts; free capacity gives it none
    assert per_lm[long_lm] == 1 and per_lm[3 - long_lm] == 8, per_lm
    ranks = json.loads(summary_file.read_text())["ranks"]
    assert ranks["1"]["busy_s"] > 0 and ranks["2"]["busy_s"] > 0 and ranks["1"]["handled"] + ranks["2"]["handled"] == 9
