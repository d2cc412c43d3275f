"""`hf-qwen3-deepstack serve` driven by the official `openai` client, on loopback: greedy tokens equal
transformers' monolithic `generate`, streamed or not; concurrent requests are batched; the
encoder's cache serves a re-sent image; bad input is a 400 and the server keeps serving; the API
key is enforced; http(s) images are fetched by the server and a silent host fails only its own
request; a client that leaves mid-stream frees its slot; SIGTERM finishes what is in flight; a hung
rank makes /health fail naming it; a killed language rank ends the server with a message naming it."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import torch
from test_runtime_token_parity import REPO, monolithic_greedy, rank_pids, runtime_env

KEY = "test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, ckpt: Path, tmp: Path, encoders: int, *extra: str):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        cmd = [sys.executable, "-m", "hf_qwen3_deepstack.cli", "serve", "--model", str(ckpt), "--port",
               str(self.port), "--encoders", str(encoders), "--threads", "1", "--timeout", "20",
               "--max-new-tokens", "6", *extra]
        env = runtime_env()
        env["HF_QWEN3_DEEPSTACK_TEST_ROOT"] = str(self.port)
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"),
                                     start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError("server did not start: " + self.log.read_text()[-3000:])

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base + "/v1", api_key=KEY, max_retries=0, **kwargs)

    def metric(self, name: str, labels: str = "") -> float:
        for line in httpx.get(self.base + "/metrics").text.splitlines():
            if line.startswith(f"hf_qwen3_deepstack_{name}{labels} "):
                return float(line.split()[-1])
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            ranks = psutil.Process(self.proc.pid).children(recursive=True)  # the agent runs them in sessions of their own
            os.killpg(self.proc.pid, signal.SIGKILL)
            for rank in ranks:
                try:
                    rank.kill()
                except psutil.NoSuchProcess:
                    pass
            self.proc.wait()


def _health_until(server: Server, status: int, within_s: float) -> httpx.Response:
    deadline = time.monotonic() + within_s
    while True:
        r = httpx.get(server.base + "/health", timeout=5)
        if r.status_code == status or time.monotonic() > deadline:
            assert r.status_code == status, (r.status_code, r.text)
            return r
        time.sleep(0.25)


def _data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _chat(image: Path, text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(image)}},
                                         {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint_dir):
    """Greedy tokens of transformers' monolithic model for the runtime's request messages."""
    from transformers import Qwen3VLMoeForConditionalGeneration

    from hf_qwen3_deepstack.tiny_checkpoint.video import load_processor

    processor = load_processor(tiny_checkpoint_dir)
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(tiny_checkpoint_dir, dtype=torch.float32).eval()

    def generate(messages: list[dict], max_new_tokens: int) -> list[int]:
        ours = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else [
            {"type": "image", "image": p["image_url"]["url"]} if p["type"] == "image_url" else p
            for p in m["content"]]} for m in messages]
        return monolithic_greedy(model, processor, ours, max_new_tokens)[0]

    return generate


@pytest.fixture(scope="module")
def server(tiny_checkpoint_dir, tmp_path_factory):
    s = Server(tiny_checkpoint_dir, tmp_path_factory.mktemp("serve"), 1, "--api-key", KEY, "--max-media-items", "3",
               "--max-body-mb", "1", "--media-fetch-timeout", "5")
    yield s
    s.stop()


def test_chat_with_an_image_streamed_or_not_gives_the_monolithic_greedy_tokens(server, sample_images, reference):
    client = server.client()
    messages = _chat(sample_images[0], "What is in the picture?")
    want = reference(messages, 9)
    reply = client.chat.completions.create(model="any", messages=messages, max_tokens=9)
    choice = reply.choices[0]
    assert choice.model_extra["token_ids"] == want
    assert choice.finish_reason in ("length", "stop") and isinstance(choice.message.content, str)
    assert reply.usage.completion_tokens == len(want) and reply.usage.total_tokens == reply.usage.prompt_tokens + len(want)
    streamed, text, finish, usage = [], "", None, None
    for chunk in client.chat.completions.create(model="any", messages=messages, max_tokens=9, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            streamed += (c.model_extra or {}).get("token_ids") or []
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert streamed == want and text == choice.message.content and finish == choice.finish_reason
    assert usage.completion_tokens == len(want)
    assert client.models.list().data[0].owned_by == "hf-qwen3-deepstack"


def test_concurrent_requests_are_batched_and_all_correct(server, sample_images, reference):
    prompts = [_chat(sample_images[i % 3], f"Question number {i}?") for i in range(16)]
    lengths = [4 + i % 5 for i in range(16)]
    before = server.metric("decode_batch_size_count"), server.metric("decode_batch_size_sum")

    async def run_all():
        client = openai.AsyncOpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0)
        return await asyncio.gather(*[client.chat.completions.create(model="any", messages=p, max_tokens=n)
                                      for p, n in zip(prompts, lengths)])

    replies = asyncio.run(run_all())
    for p, n, r in zip(prompts, lengths, replies):
        assert r.choices[0].model_extra["token_ids"] == reference(p, n)
    count = server.metric("decode_batch_size_count") - before[0]
    total = server.metric("decode_batch_size_sum") - before[1]
    assert count == 16 and total / count > 1.0  # sequences shared decode steps


def test_a_re_sent_image_is_served_from_the_encoder_cache_with_the_same_tokens(server, sample_images, reference):
    client = server.client()
    first = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(sample_images[2])}},
                                          {"type": "text", "text": "Describe it."}]}]
    r1 = client.chat.completions.create(model="any", messages=first, max_tokens=5)
    hits = server.metric("encoder_cache_lookups_total", '{result="hit"}')
    second = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                      {"role": "user", "content": "And the colours?"}]
    r2 = client.chat.completions.create(model="any", messages=second, max_tokens=5)
    assert server.metric("encoder_cache_lookups_total", '{result="hit"}') == hits + 1
    assert r2.choices[0].model_extra["token_ids"] == reference(second, 5)


@pytest.mark.parametrize("case", ["malformed-json", "unknown-part-type", "undecodable-image", "too-many-images",
                                  "prompt-too-long", "body-too-large", "bad-temperature", "unknown-role"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_bad_input_is_a_400_and_the_server_keeps_serving(server, sample_images, case, stream):
    good = _chat(sample_images[0], "hi")
    body: object = {"model": "any", "messages": good, "stream": stream}
    if case == "unknown-part-type":
        body["messages"] = [{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": "x"}}]}]
    elif case == "undecodable-image":
        body["messages"] = [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(b"not a png at all").decode()}}]}]
    elif case == "too-many-images":
        body["messages"] = [{"role": "user", "content": good[0]["content"][:1] * 4}]
    elif case == "prompt-too-long":
        body["max_tokens"] = 10_000_000
    elif case == "body-too-large":
        body["messages"] = [{"role": "user", "content": "x" * (2 << 20)}]
    elif case == "bad-temperature":
        body["temperature"] = -1
    elif case == "unknown-role":
        body["messages"] = [{"role": "robot", "content": "hi"}]
    data = b"{not json" if case == "malformed-json" else json.dumps(body).encode()
    rejected = server.metric("requests_total", '{outcome="rejected"}')
    r = httpx.post(server.base + "/v1/chat/completions", content=data, timeout=60,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert server.metric("requests_total", '{outcome="rejected"}') == rejected + 1
    ok = server.client().chat.completions.create(model="any", messages=good, max_tokens=2)
    assert len(ok.choices[0].model_extra["token_ids"]) >= 1


def test_http_images_are_fetched_by_the_server_and_a_silent_host_delays_only_its_own_request(
        server, sample_images, media_host, reference):
    files, silent = media_host
    client = server.client()
    by_url = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"{files}/{sample_images[1].name}"}},
                                           {"type": "text", "text": "What is it?"}]}]
    r = client.chat.completions.create(model="any", messages=by_url, max_tokens=5)
    assert r.choices[0].model_extra["token_ids"] == reference(_chat(sample_images[1], "What is it?"), 5)

    stalled: dict[str, object] = {}

    def ask_silent() -> None:
        t0 = time.monotonic()
        stalled["response"] = httpx.post(server.base + "/v1/chat/completions", timeout=60, headers={
            "Authorization": f"Bearer {KEY}"}, json={"model": "any", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"{silent}/never.png"}}]}]})
        stalled["seconds"] = time.monotonic() - t0

    waiting = threading.Thread(target=ask_silent)
    waiting.start()
    time.sleep(0.3)
    good = client.chat.completions.create(model="any", messages=_chat(sample_images[0], "Quick."), max_tokens=3)
    assert "response" not in stalled  # served while the silent host still had the other request waiting
    assert good.choices[0].model_extra["token_ids"] == reference(_chat(sample_images[0], "Quick."), 3)
    waiting.join(timeout=60)
    response = stalled["response"]
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages[0].content[0].image_url.url"
    assert "within 5 s" in response.json()["error"]["message"] and stalled["seconds"] < 15
    missing = httpx.post(server.base + "/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer {KEY}"},
                         json={"model": "any", "messages": [{"role": "user", "content": [
                             {"type": "image_url", "image_url": {"url": f"{files}/no-such.png"}}]}]})
    assert missing.status_code == 400 and "HTTP 404" in missing.json()["error"]["message"]


def test_a_request_without_the_api_key_is_refused(server):
    r = httpx.post(server.base + "/v1/chat/completions", json={"model": "any", "messages": []})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0).models.list()


def test_a_client_leaving_mid_stream_frees_its_slot(server, sample_images):
    cancelled = server.metric("requests_total", '{outcome="cancelled"}')
    stream = server.client().chat.completions.create(model="any", messages=_chat(sample_images[1], "Go on."),
                                                     max_tokens=400, stream=True)
    for n, _ in enumerate(stream):
        if n == 2:
            break
    stream.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.metric("requests_total", '{outcome="cancelled"}') == cancelled + 1:
            break
        time.sleep(0.2)
    assert server.metric("requests_total", '{outcome="cancelled"}') == cancelled + 1
    assert server.metric("requests_in_flight") == 0


def test_sigterm_finishes_the_requests_in_flight_then_exits(server, sample_images, reference):
    messages = [_chat(sample_images[i % 3], f"Last question {i}.") for i in range(6)]
    replies: dict[int, object] = {}

    def ask(i: int) -> None:
        try:
            replies[i] = server.client().chat.completions.create(model="any", messages=messages[i], max_tokens=40)
        except Exception as e:  # noqa: BLE001 - recorded and asserted below
            replies[i] = e

    received, ok = server.metric("requests_received_total"), server.metric("requests_total", '{outcome="ok"}')
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    # The signal goes once all six are accepted; one that arrived after it would rightly get 503.
    while server.metric("requests_received_total") < received + 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.metric("requests_received_total") == received + 6
    assert server.metric("requests_total", '{outcome="ok"}') < ok + 6, "all six ended before the signal was sent"
    os.killpg(server.proc.pid, signal.SIGTERM)
    for t in threads:
        t.join(timeout=120)
    # 0: the launcher drained (torchelastic's own stop would signal every rank, kill them 30 s later, exit 130)
    assert server.proc.wait(timeout=120) == 0
    for i in range(6):
        assert not isinstance(replies.get(i), Exception), replies.get(i)
        assert replies[i].choices[0].model_extra["token_ids"] == reference(messages[i], 40)
    log = server.log.read_text()
    assert "SIGTERM: draining" in log and "finishing those in flight" in log and "Traceback" not in log


def test_two_encoders_serve_a_hung_rank_fails_health_and_a_killed_one_ends_the_server(
        tiny_checkpoint_dir, tmp_path, sample_images, reference):
    s = Server(tiny_checkpoint_dir, tmp_path, 2)
    try:
        client = openai.OpenAI(base_url=s.base + "/v1", api_key="none", max_retries=0)
        for i in range(3):
            messages = _chat(sample_images[i], "Which one?")
            assert client.chat.completions.create(model="any", messages=messages, max_tokens=6).choices[
                0].model_extra["token_ids"] == reference(messages, 6)
        pids = rank_pids(str(s.port))
        os.kill(pids[0], signal.SIGSTOP)  # a hung encoder: /health names it, long before the job's --timeout 20
        try:
            health = _health_until(s, 503, within_s=15)
            assert "no heartbeat from rank 0 (encoder 0)" in health.json()["error"]["message"], health.text
        finally:
            os.kill(pids[0], signal.SIGCONT)
        _health_until(s, 200, within_s=15)
        os.kill(pids[2], signal.SIGKILL)
        assert s.proc.wait(timeout=60) != 0
        log = s.log.read_text()
        assert "rank 2 (language 0) failed with signal SIGKILL" in log, log[-3000:]
    finally:
        s.stop()

