"""`hf-qwen3-deepstack demo` on a fresh cache: builds the tiny default, runs 1E+1L on CPU, prints
readable results, says its weights are random, and prints how many answers are token-for-token
transformers' monolithic generate (checked here against transformers independently); it removes
its temporary folder."""

from __future__ import annotations

import json
import os
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
    assert "weights are random, so the text below is gibberish by design" in proc.stdout
    assert "[hf-qwen3-deepstack demo] identical to transformers: 4/4\n" in proc.stdout
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


def test_demo_reports_differing_answers_and_removes_its_temporary_folder(tmp_path, monkeypatch, capsys):
    """The parity line counts a differing answer (exit 1); the run's temporary folder is gone afterwards."""
    import argparse

    from hf_qwen3_deepstack import demo
    from hf_qwen3_deepstack.runtime import cli as runtime_cli

    monkeypatch.setenv("HF_QWEN3_DEEPSTACK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(demo.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    seen = {}

    def fake_launch(run_args):  # the runtime's answers: transformers' tokens, one of them altered
        requests = [json.loads(line) for line in open(run_args.requests)]
        tokens = demo.transformers_tokens(run_args.model, requests, run_args.max_new_tokens, run_args.dtype)
        tokens["video"] = tokens["video"][:-1] + [tokens["video"][-1] + 1]
        with open(run_args.output, "w") as out:
            for rid, ids in tokens.items():
                out.write(json.dumps({"id": rid, "token_ids": ids, "text": ""}) + "\n")
        seen["workdir"] = os.path.dirname(run_args.requests)
        return 0

    monkeypatch.setattr(runtime_cli, "launch", fake_launch)
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    rc = demo.main(parser.parse_args(["--max-new-tokens", "4"]))
    out = capsys.readouterr().out
    assert rc == 1 and "[hf-qwen3-deepstack demo] identical to transformers: 3/4 (different: video)" in out
    assert seen["workdir"].startswith(str(tmp_path / "tmp")) and os.listdir(tmp_path / "tmp") == []


def test_demo_with_a_model_path_that_does_not_exist_says_so(tmp_path, capsys):
    from hf_qwen3_deepstack import cli

    assert cli.main(["demo", "--model", str(tmp_path / "nope")]) == 2
    assert f"[hf-qwen3-deepstack demo] error: {tmp_path / 'nope'}: no such folder" in capsys.readouterr().err
