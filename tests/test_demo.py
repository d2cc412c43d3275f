"""`hf-qwen3-deepstack demo` on a fresh cache: builds the tiny default, runs 1E+1L on CPU, prints
readable results, and its token ids match transformers' monolithic generate."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import torch

from test_runtime_token_parity import REPO, read_jsonl, runtime_env


def test_demo_fresh_cache(tmp_path):
    env = runtime_env()
    env["HF_QWEN3_DEEPSTACK_CACHE"] = str(tmp_path / "cache")  # fresh machine: nothing cached yet
    workdir = tmp_path / "demo"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "hf_qwen3_deepstack.cli", "demo", "--workdir", str(workdir)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rid in ("one-image", "two-images", "video", "text-only"):
        assert f"[{rid}] " in proc.stdout
    assert "4 ok, 0 errors" in proc.stdout and "tokens/s" in proc.stdout
    assert elapsed < 120, elapsed

    results = {r["id"]: r for r in read_jsonl(workdir / "results.jsonl")}
    requests = [json.loads(line) for line in (workdir / "requests.jsonl").read_text().splitlines()]
    assert sorted(results) == sorted(r["id"] for r in requests)

    from transformers import Qwen3VLMoeForConditionalGeneration

    from hf_qwen3_deepstack.tiny_checkpoint.video import load_processor

    ckpt = tmp_path / "cache" / "tiny-v1-seed0"
    processor = load_processor(ckpt)
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.inference_mode():
        for r in requests:
            inputs = processor.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True, return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
            assert results[r["id"]]["token_ids"] == out[0, inputs["input_ids"].shape[1]:].tolist(), r["id"]
