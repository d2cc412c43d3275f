"""`hf-qwen3-deepstack tiny-checkpoint DIR [--family moe|dense] [--seed N]`: write a tiny Qwen3-VL-MoE
(default) or dense Qwen3-VL checkpoint."""

import argparse

from . import FAMILIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="directory to write (replaced if it exists)")
    parser.add_argument("--family", choices=FAMILIES, default="moe",
                        help="moe: Qwen3-VL-MoE; dense: Qwen3-VL")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    parser.add_argument("--expert-layout", choices=("hub", "transformers"), default="hub",
                        help="fused expert layout on disk, MoE only: hub as published checkpoints, or transformers 5's")
    parser.add_argument("--max-shard-size", default=None,
                        help="e.g. 200KB to write several shards (default: transformers' default, one shard here)")
    parser.add_argument("--sample-images", metavar="IMAGES_DIR", default=None,
                        help="also write deterministic sample images / video frames there (default: none)")


def main(args: argparse.Namespace) -> int:
    from .build import write_sample_images, write_tiny_checkpoint

    path = write_tiny_checkpoint(args.dir, seed=args.seed, family=args.family, expert_layout=args.expert_layout,
                                 max_shard_size=args.max_shard_size)
    name = "Qwen3-VL-MoE" if args.family == "moe" else "Qwen3-VL"
    print(f"wrote tiny {name} checkpoint (seed {args.seed}) to {path}:")
    for file in sorted(path.iterdir()):
        if not file.name.startswith("."):
            print(f"  {file.name} ({file.stat().st_size} bytes)")
    if args.sample_images:
        for image in write_sample_images(args.sample_images):
            print(f"sample image: {image}")
    return 0
