"""`hf-qwen3-deepstack demo`: the whole pipeline on the embedded tiny model, on CPU, in seconds.

Builds (or loads from the cache) the tiny Qwen3-VL-MoE checkpoint, writes a few sample images
and video frames, and serves four requests (one image, two images, a video, text only) on
encoder + language ranks started by the runtime (`runtime.cli.launch`). Then it runs
transformers' monolithic `generate` on the same requests and prints how many answers are
token-for-token identical. The tiny model's weights are random, so its text is gibberish by
design: what the demo shows is that the disaggregated pipeline reproduces transformers exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from .cli_values import DTYPE_CHOICES, log_prefix

PREFIX = log_prefix("demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="full Qwen3-VL-MoE checkpoint folder or Hub id (default: the embedded tiny model, "
                             "random weights, built once and cached)")
    parser.add_argument("--workdir", default=None,
                        help="keep the images, requests and results in this folder (default: a temporary "
                             "folder, removed at the end)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated per request")
    parser.add_argument("--encoders", type=int, default=1, help="encoder ranks")
    parser.add_argument("--lms", type=int, default=1, help="language ranks")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="model dtype; auto: float32 on CPU, bfloat16 on CUDA")


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


def transformers_tokens(model: str, requests: list[dict], max_new_tokens: int, dtype: str) -> dict[str, list[int]]:
    """New token ids of transformers' monolithic model (`generate`, greedy) for each request id."""
    import torch
    from transformers import AutoModelForImageTextToText
    from transformers.utils import logging as transformers_logging

    from .cli_values import parse_dtype
    from .tiny_checkpoint.video import load_processor

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    torch_dtype = parse_dtype(dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    transformers_logging.set_verbosity_error()  # no loading bar, no fps notice for frame lists
    transformers_logging.disable_progress_bar()
    processor = load_processor(model)
    reference = AutoModelForImageTextToText.from_pretrained(model, dtype=torch_dtype).to(device).eval()
    tokens = {}
    with torch.inference_mode():
        for request in requests:
            inputs = processor.apply_chat_template(request["messages"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True, return_tensors="pt").to(device)
            out = reference.generate(**inputs, max_new_tokens=request.get("max_new_tokens", max_new_tokens),
                                     do_sample=False)
            tokens[request["id"]] = out[0, inputs["input_ids"].shape[1]:].tolist()
    return tokens


def differing_ids(results: dict[str, list[int] | None], reference: dict[str, list[int]]) -> list[str]:
    """Request ids whose token ids differ from the reference (or have no result)."""
    return [rid for rid, tokens in reference.items() if results.get(rid) != tokens]


def read_result_tokens(output: Path) -> dict[str, list[int] | None]:
    """`id` -> `token_ids` of the runtime's result lines (None for an error line)."""
    if not output.is_file():
        return {}
    results = (json.loads(line) for line in output.read_text(encoding="utf-8").splitlines() if line.strip())
    return {r["id"]: r.get("token_ids") for r in results}


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.model is not None:
        from .hub.source import SourceError, locate_checkpoint

        try:
            locate_checkpoint(args.model)
        except SourceError as e:
            print(f"{PREFIX} error: {e}", file=sys.stderr)
            return 2
    workdir = nullcontext(args.workdir) if args.workdir else tempfile.TemporaryDirectory(prefix="hf-qwen3-deepstack-demo-")
    with workdir as folder:
        rc = _run(args, Path(folder))
    if rc == 0:
        print(f"{PREFIX} done in {time.perf_counter() - start:.1f} s", flush=True)
    return rc


def _run(args: argparse.Namespace, workdir: Path) -> int:
    from .runtime.cli import launch
    from .runtime.options import RuntimeOptions
    from .tiny_checkpoint.build import default_tiny_checkpoint, write_sample_images

    workdir.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        print(f"{PREFIX} model: the embedded tiny Qwen3-VL-MoE (built once, then cached). Its weights are random, "
              "so the text below is gibberish by design; the point is that it is token-for-token what "
              "transformers generates.", flush=True)
    model = args.model or str(default_tiny_checkpoint())
    images = write_sample_images(workdir / "images")
    requests = demo_requests(images)
    requests_file, output = workdir / "requests.jsonl", workdir / "results.jsonl"
    requests_file.write_text("".join(json.dumps(r) + "\n" for r in requests))
    print(f"{PREFIX} {model}\n{PREFIX} {len(requests)} requests, {len(images)} sample images in {workdir}\n"
          f"{PREFIX} starting {args.encoders} encoder + {args.lms} language rank(s)...", flush=True)
    rc = launch(RuntimeOptions(
        model=model, requests=str(requests_file), output=str(output), encoders=args.encoders, lms=args.lms,
        max_new_tokens=args.max_new_tokens, dtype=args.dtype, threads=args.threads, print_results=True,
        no_progress=True, quiet=True,
    ))
    if rc != 0:
        return rc
    print(f"{PREFIX} running transformers' monolithic generate on the same requests...", flush=True)
    reference = transformers_tokens(model, requests, args.max_new_tokens, args.dtype)
    differing = differing_ids(read_result_tokens(output), reference)
    print(f"{PREFIX} identical to transformers: {len(reference) - len(differing)}/{len(reference)}"
          + (f" (different: {', '.join(differing)})" if differing else ""), flush=True)
    if args.workdir:
        print(f"{PREFIX} results: {output}", flush=True)
    return 1 if differing else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    add_arguments(p)
    sys.exit(main(p.parse_args()))
