"""The prompts every model check uses: an image, a video (sample frames) and text only, as chat
messages built on the deterministic sample images. Parity and runtime use the same ones, so the
runtime's tokens are compared with the same monolithic generation."""

from __future__ import annotations

from pathlib import Path

NEW_TOKENS = 8  # greedy tokens generated per prompt


def prompt_messages(images: list[Path]) -> dict[str, list[dict]]:
    """name -> chat messages; `images` as written by `write_sample_images`."""
    _square, wide, _landscape, *frames = images

    def user(*items: dict) -> list[dict]:
        return [{"role": "user", "content": list(items)}]

    return {
        "image": user({"type": "image", "image": str(wide)}, {"type": "text", "text": "What is in this picture?"}),
        "video": user({"type": "video", "video": [str(f) for f in frames]},
                      {"type": "text", "text": "What happens in this clip?"}),
        "text-only": user({"type": "text", "text": "Write a haiku about routers."}),
    }
