"""The two-group runtime serves dense Qwen3-VL with no flag (the family comes from the checkpoint's
model_type): `hf-qwen3-deepstack run` with 1E+1L (untied head) and 2E+1L (tied head), and from the two
repos made by `split`, gives the greedy tokens of transformers' Qwen3VLForConditionalGeneration, and
so does `serve` (streamed or not) for local images and videos under --allowed-local-media-path.
Running from split repos never asks to trust remote code: the runtime uses its own classes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_runtime_token_parity import REPO, _img, _msg, _txt, monolithic_greedy, runtime_env

PROMPT = "Do you wish to run the custom code"


def dense_requests(images: list[Path]) -> list[dict]:
    square, wide, landscape, *frames = images
    video = {"type": "video", "video": [str(f) for f in frames]}
    return [
        {"id": "image", "messages": _msg(_img(square), _txt("What is in the picture?")), "max_new_tokens": 10},
        {"id": "several-images", "messages": _msg(_img(wide), _img(landscape), _txt("Compare them.")),
         "max_new_tokens": 8},
        {"id": "video", "messages": _msg(video, _txt("What happens?")), "max_new_tokens": 8},
        {"id": "image-and-video", "messages": _msg(_img(square), video, _txt("Both?")), "max_new_tokens": 6},
        {"id": "text-only", "messages": _msg(_txt("Tell me a story about a cat.")), "max_new_tokens": 10},
    ]


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf_qwen3_deepstack.cli", "run", *args], cwd=REPO, env=runtime_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dense_setup(sample_images, tmp_path_factory):
    """Per head: a complete tiny dense checkpoint (weights + processor) and the reference tokens."""
    from transformers import Qwen3VLForConditionalGeneration

    from hf_qwen3_deepstack.tiny_checkpoint.build import write_tiny_checkpoint
    from hf_qwen3_deepstack.tiny_checkpoint.video import load_processor

    root = tmp_path_factory.mktemp("dense-runtime")
    rows = dense_requests(sample_images)
    requests = root / "requests.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in rows))
    setups = {}
    for head in ("untied", "tied"):
        ckpt = write_tiny_checkpoint(root / head, seed=0, family="dense", tie_word_embeddings=head == "tied")
        processor = load_processor(ckpt)
        model = Qwen3VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
        expected = {}
        for r in rows:
            tokens, inputs = monolithic_greedy(model, processor, r["messages"], r["max_new_tokens"])
            visual = torch.isin(inputs["input_ids"], torch.tensor([processor.image_token_id, processor.video_token_id]))
            expected[r["id"]] = (tokens, int(visual.sum()))
        assert expected["text-only"][1] == 0 and all(expected[k][1] > 0 for k in expected if k != "text-only")
        setups[head] = (ckpt, expected)
    return requests, setups


def check_results(proc: subprocess.CompletedProcess, output: Path, expected: dict) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert PROMPT not in proc.stdout + proc.stderr
    results = {r["id"]: r for r in map(json.loads, output.read_text().splitlines()) if r}
    assert sorted(results) == sorted(expected)
    for rid, (tokens, _) in expected.items():
        assert results[rid].get("token_ids") == tokens, (rid, results[rid])


@pytest.mark.parametrize("head,encoders", [("untied", 1), ("tied", 2)], ids=["1E+1L-untied", "2E+1L-tied"])
def test_run_gives_qwen3_vl_tokens(dense_setup, tmp_path, head, encoders):
    requests, setups = dense_setup
    ckpt, expected = setups[head]
    output = tmp_path / "results.jsonl"
    proc = run_cli(["--model", str(ckpt), "--requests", str(requests), "--output", str(output),
                    "--encoders", str(encoders), "--lms", "1"])
    check_results(proc, output, expected)


def test_run_from_split_repos_gives_qwen3_vl_tokens_without_a_prompt(dense_setup, tmp_path):
    from hf_qwen3_deepstack.hub.split import split_checkpoint

    requests, setups = dense_setup
    ckpt, expected = setups["untied"]
    enc_repo, lm_repo = tmp_path / "encoder", tmp_path / "lm"
    split_checkpoint(ckpt, enc_repo, lm_repo, progress=False)
    output = tmp_path / "results.jsonl"
    proc = run_cli(["--encoder-model", str(enc_repo), "--lm-model", str(lm_repo), "--requests", str(requests),
                    "--output", str(output)])
    check_results(proc, output, expected)


def _openai_parts(content: list[dict]) -> list[dict]:
    """A request file's content parts as an OpenAI chat request's (local paths, video as frame lists)."""
    return [{"type": "image_url", "image_url": {"url": p["image"]}} if p["type"] == "image" else p for p in content]


def test_serve_gives_qwen3_vl_tokens_for_local_media_under_the_allowed_path(dense_setup, sample_images, tmp_path):
    import httpx
    from test_serve import KEY, Server

    requests, setups = dense_setup
    ckpt, expected = setups["tied"]
    rows = [json.loads(line) for line in requests.read_text().splitlines()]
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(sample_images[0].read_bytes())
    server = Server(ckpt, tmp_path, 1, "--api-key", KEY, "--allowed-local-media-path", str(sample_images[0].parent))
    try:
        client = server.client()
        for n, row in enumerate(rows):
            messages = [{"role": "user", "content": _openai_parts(row["messages"][0]["content"])}]
            if n % 2:  # every other one streamed
                tokens = [t for chunk in client.chat.completions.create(
                    model="any", messages=messages, max_tokens=row["max_new_tokens"], stream=True)
                    for choice in chunk.choices for t in (choice.model_extra or {}).get("token_ids") or []]
            else:
                reply = client.chat.completions.create(model="any", messages=messages, max_tokens=row["max_new_tokens"])
                tokens = reply.choices[0].model_extra["token_ids"]
            assert tokens == expected[row["id"]][0], row["id"]
        refused = httpx.post(server.base + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                             timeout=60, json={"model": "any", "messages": [{"role": "user", "content": [
                                 {"type": "image_url", "image_url": {"url": str(outside)}}]}]})
        assert refused.status_code == 400 and "outside the allowed local media path" in refused.text
    finally:
        server.stop()
