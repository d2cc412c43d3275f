"""Check 5, the online server: `hf-qwen3-deepstack serve` (1E+1L, on 2 GPUs when there are 2, else
on CPU) answers one streamed chat request with an image, and the streamed token ids equal the
monolithic model's greedy tokens for the same prompt. Skipped when this version has no `serve`
command or its extras are not installed."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

from .context import CheckContext
from .inputs import NEW_TOKENS
from .report import CheckResult, Status

SERVER_EXTRAS = ("fastapi", "uvicorn", "sse_starlette", "prometheus_client")  # the `serve` extra
START_TIMEOUT_S, REQUEST_TIMEOUT_S, STOP_TIMEOUT_S = 180.0, 120.0, 30.0
NAME = "one streamed request"
PROMPT = "image"  # of inputs.prompt_messages


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openai_messages(messages: list[dict]) -> list[dict]:
    """Our chat messages with each local image as an OpenAI `image_url` part (a base64 data URL)."""
    def part(p: dict) -> dict:
        if p["type"] != "image":
            return p
        data = base64.b64encode(Path(p["image"]).read_bytes()).decode()
        return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}

    return [{**m, "content": [part(p) for p in m["content"]]} for m in messages]


def _wait_healthy(base: str, proc: subprocess.Popen, deadline_s: float) -> str | None:
    """None once /health answers 200, else why not."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            return f"`serve` exited with status {proc.returncode} before it was healthy"
        with contextlib.suppress(urllib.error.URLError, OSError), \
                urllib.request.urlopen(base + "/health", timeout=2) as r:
            if r.status == 200:
                return None
        time.sleep(0.5)
    return f"`serve` was not healthy within {deadline_s:.0f} s"


def _stream_chat(base: str, messages: list[dict]) -> tuple[list[int], float, str | None]:
    """(streamed token ids, seconds to the first token, finish reason) of one streamed request."""
    body = json.dumps({"model": "selfcheck", "messages": messages, "max_tokens": NEW_TOKENS, "stream": True}).encode()
    request = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    ids, first, finish = [], None, None
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        for raw in response:  # server-sent events: "data: <json>" lines, then "data: [DONE]"
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(f"the stream reported an error: {event['error'].get('message')}")
            for choice in event.get("choices", []):
                if choice.get("token_ids"):
                    first = first if first is not None else time.perf_counter() - t0
                    ids += choice["token_ids"]
                finish = choice.get("finish_reason") or finish
    return ids, first or 0.0, finish


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it drains and exits), SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run(ctx: CheckContext) -> list[CheckResult]:
    from hf_qwen3_deepstack.cli import COMMANDS

    if "serve" not in COMMANDS:
        return [CheckResult("server", NAME, Status.SKIP, "no `serve` command in this version")]
    missing = [m for m in SERVER_EXTRAS if importlib.util.find_spec(m) is None]
    if missing:
        return [CheckResult("server", NAME, Status.SKIP, f"the serve extra is not installed ({', '.join(missing)} "
                                                         f"missing): pip install 'hf-qwen3-deepstack[serve]'")]
    on_gpus = ctx.device.type == "cuda" and torch.cuda.device_count() >= 2
    device = torch.device("cuda", 0) if on_gpus else torch.device("cpu")
    name = f"{NAME}, 1E+1L {'2 GPUs' if on_gpus else 'cpu'}, fp32"

    t0 = time.perf_counter()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = ctx.workdir / "serve.log"
    env = dict(os.environ, **({} if on_gpus else {"CUDA_VISIBLE_DEVICES": ""}))
    cmd = [sys.executable, "-m", "hf_qwen3_deepstack.cli", "serve", "--model", str(ctx.checkpoint()), "--port",
           str(port), "--encoders", "1", "--lms", "1", "--dtype", "float32", "--max-new-tokens", str(NEW_TOKENS),
           "--timeout", "120", "--quiet", "--no-progress"]
    expected = ctx.monolithic_tokens(PROMPT, device, torch.float32)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        problem = _wait_healthy(base, proc, START_TIMEOUT_S)
        if problem is None:
            got, ttft, finish = _stream_chat(base, _openai_messages(ctx.messages()[PROMPT]))
    except Exception as e:  # noqa: BLE001 - reported as the check's failure
        problem = f"{type(e).__name__}: {e}"
    finally:
        _stop(proc)
    seconds = time.perf_counter() - t0
    if problem is not None:
        tail = log.read_text(errors="replace").strip().splitlines()[-20:]
        return [CheckResult("server", name, Status.FAIL, f"{problem}: {tail[-1] if tail else 'no output'}",
                            {"log_tail": "\n".join(tail)}, seconds)]
    same = got == expected
    figure = (f"{len(got)} tokens streamed, first after {ttft:.2f} s, finish_reason {finish}; "
              f"{'equal to' if same else 'DIFFERENT from'} the monolithic model's greedy tokens")
    if not same:
        figure += f" (got {got}, expected {expected})"
    return [CheckResult("server", name, Status.PASS if same else Status.FAIL, figure,
                        {"tokens_equal": same, "token_ids": got, "expected_tokens": expected,
                         "first_token_s": ttft, "finish_reason": finish}, seconds)]
