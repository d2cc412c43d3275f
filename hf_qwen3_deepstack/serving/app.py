"""The HTTP API (FastAPI, served by uvicorn on a thread of the language leader), following the
OpenAI chat-completions schema as `transformers serve` does: `POST /v1/chat/completions` (with SSE
streaming), `GET /v1/models`, `GET /health`, `GET /metrics`.

Each choice also carries `token_ids` (and each streamed chunk the ids it adds): the exact tokens,
for clients that compare them with another implementation.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette.sse import EventSourceResponse

from hf_qwen3_deepstack.runtime.remote_media import MediaError, inline_remote_media

from .gateway import Gateway, Pending
from .metrics import Metrics
from .openai_schema import BadRequest, MediaPolicy, parse_chat_request


@dataclass(frozen=True)
class ApiSettings:
    model_name: str
    api_key: str | None
    max_body_bytes: int
    media: MediaPolicy
    default_max_tokens: int
    media_fetch_timeout_s: float  # all http(s) media of one request, fetched by the server
    health_within_s: float  # /health fails when the leader's loop has not turned for this long


def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


def build_app(gateway: Gateway, metrics: Metrics, settings: ApiSettings, tokenizer) -> FastAPI:
    app = FastAPI(title="hf-qwen3-deepstack", docs_url=None, redoc_url=None)
    created = int(time.time())
    decode_lock = threading.Lock()

    def decode(ids: list[int]) -> str:
        with decode_lock:
            return tokenizer.decode(ids, skip_special_tokens=True)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if settings.api_key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization", "") != f"Bearer {settings.api_key}":
                return error(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")
        return await call_next(request)

    @app.get("/health")
    async def health():
        problem = gateway.health_problem(settings.health_within_s)
        if problem:
            return error(503, problem, "server_error")
        return {"status": "ok", "accepting": gateway.accepting}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": created,
                                            "owned_by": "hf-qwen3-deepstack"}]}

    def rejected(message: str, param: str | None = None) -> JSONResponse:
        """A 400 for the request as sent, counted as `requests_total{outcome="rejected"}`."""
        metrics.requests.labels("rejected").inc()
        return error(400, message, param=param)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            return rejected(f"request body of {declared} bytes is over the limit of {settings.max_body_bytes}")
        raw = await request.body()
        if len(raw) > settings.max_body_bytes:
            return rejected(f"request body of {len(raw)} bytes is over the limit of {settings.max_body_bytes}")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return rejected(f"the body is not valid JSON: {e}")
        try:
            chat = parse_chat_request(body, settings.media, settings.default_max_tokens)
            await inline_remote_media(chat.messages, settings.media_fetch_timeout_s, settings.max_body_bytes,
                                      image_field="image_url.url")
        except BadRequest as e:
            return rejected(str(e), e.param)
        except MediaError as e:
            return rejected(str(e), e.where)
        if not gateway.accepting:
            return error(503, "the server is shutting down", "server_error")
        pending = gateway.submit(chat)
        metrics.received.inc()
        # The first update decides the status, streamed or not: a request that the encoder refuses (an
        # undecodable image, a prompt too long) gets its 400 instead of a 200 stream that then fails.
        first = await _next_update(request, pending)
        if first is None:
            return Response(status_code=499)
        if first[0] == "result" and "error" in first[1]:
            return _failed(first[1])
        if chat.stream:
            return EventSourceResponse(_stream(pending, chat.include_usage, first), ping=15)
        return await _complete(request, pending, first)

    async def _next_update(request: Request, pending: Pending) -> tuple[str, Any] | None:
        """The request's next update, or None once the client has gone (its slot is then freed)."""
        while True:
            try:
                return await asyncio.wait_for(pending.updates.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    gateway.cancel(pending.request.index)
                    return None

    def _failed(result: dict[str, Any]) -> JSONResponse:
        status = result.get("status", 500)
        return error(status, result["error"], "invalid_request_error" if status == 400 else "server_error")

    async def _complete(request: Request, pending: Pending, update: tuple[str, Any]):
        while update[0] != "result":
            update = await _next_update(request, pending)
            if update is None:
                return Response(status_code=499)
        payload = update[1]
        if "error" in payload:
            return _failed(payload)
        return {
            "id": pending.request.id, "object": "chat.completion", "created": int(time.time()),
            "model": settings.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": payload["text"]},
                         "finish_reason": payload["finish_reason"], "logprobs": None,
                         "token_ids": payload["token_ids"]}],
            "usage": _usage(payload),
        }

    async def _stream(pending: Pending, include_usage: bool, first: tuple[str, Any]):
        chunk = {"id": pending.request.id, "object": "chat.completion.chunk", "created": int(time.time()),
                 "model": settings.model_name}
        stops = pending.request.params.stop
        holdback = max((len(s) for s in stops), default=1) - 1
        ids: list[int] = []
        sent = ""
        finished = False
        try:
            yield json.dumps({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                    "finish_reason": None}]})
            kind, payload = first
            while True:
                if kind == "tokens":
                    ids += payload
                    text = decode(ids)
                    stable = len(text) - holdback if stops else len(text)
                    if text.endswith("\ufffd"):  # an incomplete character: wait for its next token
                        stable = min(stable, len(text) - 1)
                    delta = text[len(sent):max(stable, len(sent))]
                    sent += delta
                    yield json.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": delta},
                                                            "finish_reason": None, "token_ids": payload}]})
                    kind, payload = await pending.updates.get()
                    continue
                finished = True
                if "error" in payload:
                    yield json.dumps({"error": {"message": payload["error"], "type": "server_error"}})
                    break
                text, rest = payload["text"], payload["token_ids"][len(ids):]
                tail = text[len(sent):] if text.startswith(sent) else ""
                yield json.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": tail},
                                                        "finish_reason": payload["finish_reason"],
                                                        "token_ids": rest}]})
                if include_usage:
                    yield json.dumps({**chunk, "choices": [], "usage": _usage(payload)})
                break
            yield "[DONE]"
        finally:
            if not finished:  # the client went away mid-stream: free its batch slot
                gateway.cancel(pending.request.index)

    return app


def _usage(result: dict[str, Any]) -> dict[str, int]:
    completion = len(result["token_ids"])
    return {"prompt_tokens": result["prompt_tokens"], "completion_tokens": completion,
            "total_tokens": result["prompt_tokens"] + completion}


def media_policy(allowed_local_media_path: str | None, max_media_items: int) -> MediaPolicy:
    root = Path(allowed_local_media_path).resolve() if allowed_local_media_path else None
    return MediaPolicy(root, max_media_items)
