"""OpenAI chat-completions requests -> the runtime's request messages and generation parameters,
checked field by field: every problem is a `BadRequest` naming the field (HTTP 400).

Content items: `text`; `image_url` (`{"url": ...}` or a string) with a `data:` base64 URL, an
http(s) URL (fetched afterwards, by `remote_media`), or a `file://` URL / local path under an
allowed root; `video` (this server's
extension, as in the request files: a list of frame URLs or paths, same rules).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_qwen3_deepstack.runtime.requests import ROLES
from hf_qwen3_deepstack.runtime.sampling import SamplingParams

KNOWN_FIELDS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop",
    "stream", "stream_options", "n", "user", "logprobs", "frequency_penalty", "presence_penalty",
}


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class MediaPolicy:
    allowed_local_root: Path | None  # None: local files are refused
    max_media_items: int  # images plus video frames per request


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]  # the runtime's format (request files)
    params: SamplingParams
    stream: bool
    include_usage: bool


def parse_chat_request(body: Any, policy: MediaPolicy, default_max_tokens: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}", unknown[0])
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported", "n")
    if body.get("logprobs"):
        raise BadRequest("logprobs are not supported", "logprobs")
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise BadRequest(f"{name} is not supported", name)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    media = [0]
    messages = [_message(m, i, policy, media) for i, m in enumerate(raw)]
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    fields = {k: body.get(k) for k in ("temperature", "top_p", "top_k", "seed", "stop")}
    fields["max_new_tokens"] = default_max_tokens if max_tokens is None else max_tokens
    try:
        params = SamplingParams.from_request(fields, default_max_new_tokens=default_max_tokens)
    except ValueError as e:
        text = str(e).replace("max_new_tokens", "max_tokens")
        raise BadRequest(text, text.split(" ", 1)[0]) from None
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object", "stream_options")
    return ChatRequest(messages, params, stream, bool(options.get("include_usage", False)))


def _message(m: Any, i: int, policy: MediaPolicy, media: list[int]) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(m, dict) or "role" not in m:
        raise BadRequest(f"{where} must be an object with 'role' and 'content'", where)
    if m["role"] not in ROLES:
        raise BadRequest(f"{where}.role {m['role']!r} is unknown; expected one of {list(ROLES)}", f"{where}.role")
    content = m.get("content")
    if isinstance(content, str):
        return {"role": m["role"], "content": content}
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of content parts", f"{where}.content")
    return {"role": m["role"], "content": [_part(p, f"{where}.content[{j}]", policy, media)
                                           for j, p in enumerate(content)]}


def _part(p: Any, where: str, policy: MediaPolicy, media: list[int]) -> dict[str, Any]:
    if not isinstance(p, dict) or not isinstance(p.get("type"), str):
        raise BadRequest(f"{where} must be an object with a 'type'", where)
    kind = p["type"]
    if kind == "text":
        if not isinstance(p.get("text"), str):
            raise BadRequest(f"{where}.text must be a string", f"{where}.text")
        return {"type": "text", "text": p["text"]}
    if kind == "image_url":
        spec = p.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        return {"type": "image", "image": _media(url, f"{where}.image_url.url", policy, media)}
    if kind == "video":
        frames = p.get("video")
        if not isinstance(frames, list) or not frames:
            raise BadRequest(f"{where}.video must be a non-empty list of frame URLs", f"{where}.video")
        return {"type": "video", "video": [_media(f, f"{where}.video[{k}]", policy, media)
                                           for k, f in enumerate(frames)]}
    raise BadRequest(f"{where}.type {kind!r} is not supported; use 'text', 'image_url' or 'video'", f"{where}.type")


def _media(url: Any, where: str, policy: MediaPolicy, media: list[int]) -> str:
    media[0] += 1
    if media[0] > policy.max_media_items:
        raise BadRequest(f"too many images and video frames: at most {policy.max_media_items} per request", where)
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{where} must be a URL string", where)
    if url.startswith("data:"):
        _check_data_url(url, where)
        return url
    if url.startswith(("http://", "https://")):
        return url
    path = url[len("file://"):] if url.startswith("file://") else url
    root = policy.allowed_local_root
    if root is None:
        raise BadRequest(f"{where}: local files are not allowed (start the server with --allowed-local-media-path)",
                         where)
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(root):
        raise BadRequest(f"{where}: {path} is outside the allowed local media path {root}", where)
    if not real.is_file():
        raise BadRequest(f"{where}: {path} does not exist", where)
    return str(real)


def _check_data_url(url: str, where: str) -> None:
    from PIL import Image

    head, _, data = url.partition(",")
    if not head.startswith("data:image/") or not head.endswith(";base64"):
        raise BadRequest(f"{where}: a data URL must be 'data:image/<format>;base64,<data>'", where)
    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as img:
            img.verify()
    except (binascii.Error, ValueError, OSError) as e:
        raise BadRequest(f"{where}: the image cannot be decoded ({type(e).__name__}: {e})", where) from None
