"""Requests file (JSONL) parsing and validation.

The language leader parses the file; a request is named on the wire by its index (line number
among non-blank lines). A line that cannot be parsed still becomes a `Request` carrying `error`:
it produces an error result line and the job goes on.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sampling import PARAM_KEYS, SamplingParams


@dataclass
class Request:
    index: int  # position in the file (non-blank lines), the id used on the wire
    id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    params: SamplingParams | None = None  # None only with `error`
    error: str | None = None  # set when the line itself is invalid
    stream: bool = False  # the language rank reports tokens as they come (the HTTP server's streams)


_ID_RE = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.)*)"')
ROLES = ("system", "user", "assistant", "tool")


def load_requests(path: str | os.PathLike, default_max_new_tokens: int) -> list[Request]:
    """Parse a JSONL requests file. Never raises for a bad line (see `Request.error`).

    Lines end at `\n` (or `\r\n`) only: JSON strings may hold U+2028, U+2029 or U+0085 raw. A
    leading UTF-8 BOM is skipped; a line that is not valid UTF-8 becomes an error result."""
    data = Path(path).read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    requests: list[Request] = []
    seen: set[str] = set()
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            m = _ID_RE.search(raw.decode("utf-8", errors="replace"))
            req = Request(len(requests), m.group(1) if m else f"line-{line_no}",
                          error=f"line {line_no} is not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})")
        else:
            req = parse_request_line(line, len(requests), line_no, default_max_new_tokens)
        if req.id in seen:  # results are keyed by id: a second one gets a unique id and an error
            dup = f"duplicate request id {req.id!r} on line {line_no}"
            req.error = dup if req.error is None else f"{dup}; {req.error}"
            req.id = f"{req.id}#line{line_no}"
            while req.id in seen:
                req.id += "'"
        seen.add(req.id)
        requests.append(req)
    return requests


def parse_request_line(line: str, index: int, line_no: int, default_max_new_tokens: int) -> Request:
    fallback_id = f"line-{line_no}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        m = _ID_RE.search(line)
        rid = m.group(1) if m else fallback_id
        return Request(index, rid, error=f"malformed JSON on line {line_no}: {e.msg} (column {e.colno})")
    if not isinstance(obj, dict):
        return Request(index, fallback_id, error=f"line {line_no} is not a JSON object")
    rid = obj.get("id")
    rid = fallback_id if rid is None else str(rid)
    try:
        return parse_request(obj, index, rid, default_max_new_tokens)
    except ValueError as e:
        return Request(index, rid, error=f"invalid request on line {line_no}: {e}")


def parse_request(obj: dict[str, Any], index: int, rid: str, default_max_new_tokens: int) -> Request:
    """A checked `Request` from a request object; ValueError names what is wrong."""
    unknown = sorted(set(obj) - {"id", "messages", *PARAM_KEYS})
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; a request has 'id', 'messages' and {list(PARAM_KEYS)}")
    messages = _validate_messages(obj.get("messages"))
    params = SamplingParams.from_request(obj, default_max_new_tokens)
    return Request(index, rid, messages=messages, params=params)


def _validate_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError("each message needs 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"unknown role {m['role']!r}; expected one of {list(ROLES)}")
        content = m["content"]
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise ValueError("message 'content' must be a string or a list of items")
        for item in content:
            if not isinstance(item, dict) or "type" not in item:
                raise ValueError("each content item needs a 'type'")
            kind = item["type"]
            if kind == "text":
                if not isinstance(item.get("text"), str):
                    raise ValueError("a text item needs a string 'text'")
            elif kind == "image":
                src = item.get("image", item.get("url", item.get("path")))
                if not isinstance(src, str):
                    raise ValueError("an image item needs 'image': PATH")
            elif kind == "video":
                src = item.get("video", item.get("path"))
                if not (isinstance(src, str) or (isinstance(src, list) and src and all(isinstance(s, str) for s in src))):
                    raise ValueError("a video item needs 'video': PATH or [FRAME_PATHS...]")
            else:
                raise ValueError(f"unknown content item type {kind!r}")
    return messages


def check_local_files(messages: list[dict[str, Any]]) -> None:
    """Raise FileNotFoundError naming the first local image/frame path that does not exist."""
    for m in messages:
        content = m.get("content")
        if not isinstance(content, list):
            continue
        for item in content:
            kind = item.get("type")
            if kind == "image":
                paths = [item.get("image", item.get("url", item.get("path")))]
            elif kind == "video":
                v = item.get("video", item.get("path"))
                paths = v if isinstance(v, list) else [v]
            else:
                continue
            for p in paths:
                if isinstance(p, str) and not _is_remote(p) and not Path(_strip_file(p)).is_file():
                    raise FileNotFoundError(f"{kind} file not found: {p}")


def _is_remote(p: str) -> bool:
    return p.startswith(("http://", "https://", "data:"))


def _strip_file(p: str) -> str:
    return p[len("file://"):] if p.startswith("file://") else p
