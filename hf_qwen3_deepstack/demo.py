"""`hf-qwen3-deepstack demo`: the whole pipeline on the embedded tiny model, on CPU, in seconds.

Builds (or loads from the cache) the tiny Qwen3-VL-MoE checkpoint, writes a few sample images
and video frames with PIL, and serves four requests (one image, two images, a video, text only)
on 1 encoder rank + 1 language rank started through torch's launcher API, printing each result.
The weights are random, so the generated text is gibberish; the point is the plumbing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

PREFIX = "[hf-qwen3-deepstack demo]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint (default: the embedded tiny model)")
    parser.add_argument("--workdir", default=None, help="where images, requests and results go (default: a temp dir)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--encoders", type=int, default=1)
    parser.add_argument("--lms", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    parser.add_argument("--dtype", default="auto")


def demo_requests(images: list[Path]) -> list[dict]:
    square, wide, landscape, *frames = images

    def user(*items):
        return [{"role": "user", "content": list(items)}]

    return [
        {"id": "one-image", "messages": user({"type": "image", "image": str(square)},
                                             {"type": "text", "text": "What is in this picture?"})},
        {"id": "two-images", "messages": user({"type": "image", "image": str(wide)},
                                              {"type": "image", "image": str(landscape)},
                                              {"type": "text", "text": "How do these two differ?"})},
        {"id": "video", "messages": user({"type": "video", "video": [str(f) for f in frames]},
                                         {"type": "text", "text": "What happens in this clip?"})},
        {"id": "text-only", "messages": user({"type": "text", "text": "Write a haiku about routers."})},
    ]


def main(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    from hf_qwen3_deepstack.runtime.cli import launch
    from hf_qwen3_deepstack.runtime.models import resolve_model
    from hf_qwen3_deepstack.tiny_checkpoint.build import write_sample_images

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hf-qwen3-deepstack-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{PREFIX} model: {'building or loading the tiny default' if args.model is None else args.model}",
          flush=True)
    model = resolve_model(args.model)
    images = write_sample_images(workdir / "images")
    requests = workdir / "requests.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in demo_requests(images)))
    output = workdir / "results.jsonl"
    print(f"{PREFIX} {model}\n{PREFIX} {len(images)} sample images in {workdir / 'images'}\n"
          f"{PREFIX} starting {args.encoders} encoder + {args.lms} language rank(s) on CPU...", flush=True)
    run_args = argparse.Namespace(
        model=str(model), requests=str(requests), output=str(output), encoders=args.encoders, lms=args.lms,
        max_new_tokens=args.max_new_tokens, dtype=args.dtype, capacity_tokens=8192, max_inflight=2,
        timeout=300.0, threads=args.threads, print_results=True, no_progress=True, quiet=True, summary_json=None, serial=False,
    )
    rc = launch(run_args)
    if rc == 0:
        print(f"{PREFIX} results: {output}\n{PREFIX} done in {time.perf_counter() - t0:.1f} s", flush=True)
    return rc


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    add_arguments(p)
    sys.exit(main(p.parse_args()))
