"""http(s) images and video frames of a request, fetched within a time and a size bound (all of a
request's URLs at once) and handed on as `data:` URLs. The HTTP server fetches them before it
dispatches a request; an encoder rank fetches those of a requests file before it prepares the
prompt. Left to the processor, a fetch has no time limit, and a silent host would stall every
request behind it; here it fails only the request that named it, naming the URL's place."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import httpx



class MediaError(ValueError):
    def __init__(self, message: str, where: str):
        super().__init__(message)
        self.where = where  # the URL's place in the request, e.g. messages[0].content[1].image_url.url


MAX_MEDIA_BYTES = 64 << 20  # one image of a requests file (the server's bound is --max-body-mb)


async def inline_remote_media(messages: list[dict[str, Any]], timeout_s: float, max_bytes: int = MAX_MEDIA_BYTES,
                              image_field: str = "image") -> None:
    """Replace every http(s) image or frame in `messages` (the runtime's format) by its data URL, in
    place. Errors name the URL's place, its image part's field called `image_field` (the OpenAI
    request's `image_url.url` for the server)."""
    slots = list(_remote_slots(messages, image_field))
    if not slots:
        return
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True, max_redirects=5) as client:
        tasks = [asyncio.ensure_future(_fetch(client, holder[key], where, max_bytes)) for where, holder, key in slots]
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for (where, holder, key), task in zip(slots, tasks):
        if task in pending:
            raise MediaError(f"{where}: {holder[key]} could not be fetched within {timeout_s:g} s "
                             f"(--media-fetch-timeout)", where)
        if task.exception() is not None:
            raise task.exception()
    urls = [task.result() for task in tasks]
    for (_, holder, key), url in zip(slots, urls):
        holder[key] = url


def has_remote_media(messages: list[dict[str, Any]]) -> bool:
    return next(_remote_slots(messages, "image"), None) is not None


def _remote_slots(messages: list[dict[str, Any]], image_field: str):
    """(where, container, key) of each http(s) image or frame."""
    for i, m in enumerate(messages):
        if not isinstance(m["content"], list):
            continue
        for j, part in enumerate(m["content"]):
            where = f"messages[{i}].content[{j}]"
            if part["type"] == "image" and _remote(part["image"]):
                yield f"{where}.{image_field}", part, "image"
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
                raise MediaError(f"{where}: fetching {url} gave HTTP {response.status_code}", where)
            data = bytearray()
            async for piece in response.aiter_bytes():
                data += piece
                if len(data) > max_bytes:
                    raise MediaError(f"{where}: {url} is larger than {max_bytes} bytes", where)
    except httpx.HTTPError as e:
        raise MediaError(f"{where}: {url} could not be fetched ({type(e).__name__}: {e})", where) from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = (img.format or "png").lower()
            img.verify()
    except (OSError, ValueError) as e:
        raise MediaError(f"{where}: {url} is not a decodable image ({type(e).__name__}: {e})", where) from None
    return f"data:image/{fmt};base64," + base64.b64encode(bytes(data)).decode()
