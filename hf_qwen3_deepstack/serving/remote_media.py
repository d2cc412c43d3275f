"""http(s) images and video frames of a chat request, fetched by the HTTP server before the request
is dispatched (bounded in time and in bytes, all of a request's URLs at once) and handed on as
`data:` URLs: an encoder's prompt preparation never waits on the network, so a slow or silent media
host delays only the request that named it, and its failure is that request's 400."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import httpx

from .openai_schema import BadRequest


async def inline_remote_media(messages: list[dict[str, Any]], timeout_s: float, max_bytes: int) -> None:
    """Replace every http(s) image or frame in `messages` (the runtime's format) by its data URL, in place."""
    slots = list(_remote_slots(messages))
    if not slots:
        return
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True, max_redirects=5) as client:
        jobs = [_fetch(client, holder[key], where, max_bytes) for where, holder, key in slots]
        try:
            urls = await asyncio.wait_for(asyncio.gather(*jobs), timeout=timeout_s)
        except asyncio.TimeoutError:
            raise BadRequest(f"the request's media URLs could not be fetched within {timeout_s:g} s "
                             f"(--media-fetch-timeout)", slots[0][0]) from None
    for (_, holder, key), url in zip(slots, urls):
        holder[key] = url


def _remote_slots(messages: list[dict[str, Any]]):
    """(where, container, key) of each http(s) image or frame, named as in the OpenAI request."""
    for i, m in enumerate(messages):
        if not isinstance(m["content"], list):
            continue
        for j, part in enumerate(m["content"]):
            where = f"messages[{i}].content[{j}]"
            if part["type"] == "image" and _remote(part["image"]):
                yield f"{where}.image_url.url", part, "image"
            elif part["type"] == "video":
                for k, frame in enumerate(part["video"]):
                    if _remote(frame):
                        yield f"{where}.video[{k}]", part["video"], k


def _remote(url: str) -> bool:
    return url.startswith(("http://", "https://"))


async def _fetch(client: httpx.AsyncClient, url: str, where: str, max_bytes: int) -> str:
    from PIL import Image

    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise BadRequest(f"{where}: fetching {url} gave HTTP {response.status_code}", where)
            data = bytearray()
            async for piece in response.aiter_bytes():
                data += piece
                if len(data) > max_bytes:
                    raise BadRequest(f"{where}: {url} is larger than {max_bytes} bytes (--max-body-mb)", where)
    except httpx.HTTPError as e:
        raise BadRequest(f"{where}: {url} could not be fetched ({type(e).__name__}: {e})", where) from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = (img.format or "png").lower()
            img.verify()
    except (OSError, ValueError) as e:
        raise BadRequest(f"{where}: {url} is not a decodable image ({type(e).__name__}: {e})", where) from None
    return f"data:image/{fmt};base64," + base64.b64encode(bytes(data)).decode()
