"""Token parity of the two-group runtime (gloo, CPU) with transformers' monolithic model.

For 1E+1L (`hf-qwen3-deepstack run`, launcher API), 2E+1L (same) and 1E+2L (`torchrun -m
hf_qwen3_deepstack.launch`), the `token_ids` of every request must equal what
`Qwen3VLMoeForConditionalGeneration.generate` produces for the same checkpoint, processor and
messages. Requests: one image, several images, a video (frames), text only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _msg(*items):
    return [{"role": "user", "content": list(items)}]


def _img(p):
    return {"type": "image", "image": str(p)}


def _txt(t):
    return {"type": "text", "text": t}


def parity_requests(images: list[Path]) -> list[dict]:
    square, wide, landscape, *frames = images
    return [
        {"id": "image", "messages": _msg(_img(square), _txt("What is in the picture?")), "max_new_tokens": 12},
        {"id": "several-images", "messages": _msg(_img(wide), _img(landscape), _txt("Compare them.")),
         "max_new_tokens": 8},
        {"id": "video", "messages": _msg({"type": "video", "video": [str(f) for f in frames]},
                                         _txt("What happens?")), "max_new_tokens": 10},
        {"id": "text-only", "messages": _msg(_txt("Tell me a story about a cat.")), "max_new_tokens": 12},
        {"id": "multi-turn", "messages": [
            {"role": "user", "content": [_img(landscape), _txt("Describe.")]},
            {"role": "assistant", "content": [_txt("A gradient.")]},
            {"role": "user", "content": [_txt("And the colours?")]}], "max_new_tokens": 6},
        {"id": "text-default-length", "messages": _msg(_txt("hello"))},
    ]


DEFAULT_MAX_NEW = 7


def monolithic_greedy(model, processor, messages: list[dict], max_new_tokens: int) -> tuple[list[int], dict]:
    """transformers' own greedy tokens for `messages` (the reference), and the processor's inputs."""
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist(), inputs


def rank_pids(marker: str) -> dict[int, int]:
    """Global rank -> pid of the rank processes started with HF_QWEN3_DEEPSTACK_TEST_ROOT=marker (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        values = dict(v.split(b"=", 1) for v in env if b"=" in v)
        if (b"hf_qwen3_deepstack.launch" in cmd and values.get(b"HF_QWEN3_DEEPSTACK_TEST_ROOT") == marker.encode()
                and b"RANK" in values):
            found[int(values[b"RANK"])] = int(entry.name)
    return found


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def runtime_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("HF_QWEN3_DEEPSTACK_FAULT", None)
    return env


def run_runtime(how: str, e: int, l: int, ckpt: Path, requests: Path, output: Path, *extra: str,
                timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    opts = ["--model", str(ckpt), "--requests", str(requests), "--output", str(output), "--encoders", str(e),
            "--lms", str(l), "--max-new-tokens", str(DEFAULT_MAX_NEW), "--threads", "1", "--no-progress",
            "--timeout", "120", *extra]
    if how == "run":
        cmd = [sys.executable, "-m", "hf_qwen3_deepstack.cli", "run", *opts]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(e + l),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "--max-restarts", "0",
               "-m", "hf_qwen3_deepstack.launch", *opts]
    return subprocess.run(cmd, cwd=REPO, env=env or runtime_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def parity_setup(tiny_checkpoint_dir, sample_images, tmp_path_factory):
    from transformers import Qwen3VLMoeForConditionalGeneration

    from hf_qwen3_deepstack.tiny_checkpoint.video import load_processor

    rows = parity_requests(sample_images)
    req_file = write_jsonl(tmp_path_factory.mktemp("parity") / "requests.jsonl", rows)
    processor = load_processor(tiny_checkpoint_dir)
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(tiny_checkpoint_dir, dtype=torch.float32).eval()
    expected = {}
    for r in rows:
        tokens, inputs = monolithic_greedy(model, processor, r["messages"], r.get("max_new_tokens", DEFAULT_MAX_NEW))
        expected[r["id"]] = {"token_ids": tokens, "prompt_tokens": inputs["input_ids"].shape[1],
                                 "visual_tokens": int(torch.isin(inputs["input_ids"], torch.tensor(
                                     [processor.image_token_id, processor.video_token_id])).sum())}
    # the requests must exercise what they claim to
    assert expected["image"]["visual_tokens"] > 0 and expected["video"]["visual_tokens"] > 0
    assert expected["text-only"]["visual_tokens"] == 0
    assert any(len(v["token_ids"]) > 1 for v in expected.values())
    return tiny_checkpoint_dir, req_file, expected


# `run` with 1E+1L, 2E+1L and 1E+2L under batching: tests/test_runtime_batching.py
@pytest.mark.parametrize("how,e,l,extra", [("torchrun", 1, 2, ("--serial",)), ("run", 2, 1, ("--max-batch-size", "1"))],
                         ids=["1E+2L-torchrun-serial", "2E+1L-run-unbatched"])
def test_token_parity(parity_setup, tmp_path, how, e, l, extra):
    ckpt, req_file, expected = parity_setup
    out_file = tmp_path / "results.jsonl"
    proc = run_runtime(how, e, l, ckpt, req_file, out_file, *extra)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = read_jsonl(out_file)
    assert sorted(r["id"] for r in results) == sorted(expected), results
    for r in results:
        assert "error" not in r, r
        want = expected[r["id"]]
        assert r["token_ids"] == want["token_ids"], (r["id"], r["token_ids"], want["token_ids"])
        assert r["prompt_tokens"] == want["prompt_tokens"]
        assert r["visual_tokens"] == want["visual_tokens"]
        assert set(r["timings"]) == {"encode_s", "transfer_s", "prefill_s", "decode_s"}
        assert all(v >= 0 for v in r["timings"].values())
        assert r["finish_reason"] in ("stop", "length")
        assert 0 <= r["queue_s"] and 0 < r["ttft_s"] <= r["latency_s"]
        assert 0 <= r["encoder_rank"] < e and e <= r["lm_rank"] < e + l
        assert isinstance(r["text"], str)
    # work really was shared across the ranks
    assert {r["encoder_rank"] for r in results} == set(range(e))
    assert {r["lm_rank"] for r in results} == set(range(e, e + l))
    # the language leader prints the summary table
    assert "summary" in proc.stdout and "p95" in proc.stdout and "tokens/s" in proc.stdout and "ttft_s" in proc.stdout


def test_token_parity_from_split_repos(parity_setup, tmp_path):
    """Encoder ranks load the encoder repo and language ranks the language repo made by `split`
    (`--encoder-model` / `--lm-model`, no `--model`): same tokens as the monolithic model."""
    from hf_qwen3_deepstack.hub.split import split_checkpoint

    ckpt, req_file, expected = parity_setup
    enc_repo, lm_repo = tmp_path / "encoder", tmp_path / "lm"
    split_checkpoint(ckpt, enc_repo, lm_repo, dtype="float32", max_shard_size="200KB", progress=False)
    out_file = tmp_path / "results.jsonl"
    cmd = [sys.executable, "-m", "hf_qwen3_deepstack.cli", "run", "--encoder-model", str(enc_repo),
           "--lm-model", str(lm_repo), "--requests", str(req_file), "--output", str(out_file),
           "--max-new-tokens", str(DEFAULT_MAX_NEW), "--threads", "1", "--no-progress", "--timeout", "120"]
    proc = subprocess.run(cmd, cwd=REPO, env=runtime_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"loaded encoder from {enc_repo}" in proc.stderr
    assert f"loaded language model from {lm_repo}" in proc.stderr
    results = {r["id"]: r for r in read_jsonl(out_file)}
    assert sorted(results) == sorted(expected)
    for rid, want in expected.items():
        assert results[rid].get("token_ids") == want["token_ids"], results[rid]
        assert results[rid]["prompt_tokens"] == want["prompt_tokens"]
