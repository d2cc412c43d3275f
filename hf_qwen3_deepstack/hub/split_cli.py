"""`hf-qwen3-deepstack split SRC --encoder-out DIR --lm-out DIR [...]`."""

from __future__ import annotations

import argparse
import logging
import sys

DESCRIPTION = """\
Split a Qwen3-VL-MoE or dense Qwen3-VL checkpoint (local folder or Hub id; the family comes from
its model_type) into two repos that load with plain transformers and trust_remote_code=True: the
vision encoder (+ processor) and the DeepStack language model (+ tokenizer). Tensors are streamed
shard by shard; nothing is uploaded unless --push-to-hub is given."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("src", metavar="SRC", help="local Qwen3-VL(-MoE) checkpoint folder or Hub repo id (ORG/NAME)")
    parser.add_argument("--encoder-out", required=True, metavar="DIR", help="output folder of the encoder repo")
    parser.add_argument("--lm-out", required=True, metavar="DIR", help="output folder of the language-model repo")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                        help="floating-point dtype of the written weights (default: auto = as stored)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB, 500MB (default 5GB)")
    parser.add_argument("--revision", default=None, help="Hub revision of SRC (branch, tag or commit)")
    parser.add_argument("--push-to-hub", nargs=2, metavar=("ENCODER_REPO", "LM_REPO"), default=None,
                        help="after writing, create and upload ORG/NAME-encoder and ORG/NAME-lm")
    parser.add_argument("--private", action="store_true", help="create the pushed repos as private")
    parser.add_argument("--overwrite", action="store_true", help="replace existing non-empty output folders")
    parser.add_argument("--dry-run", action="store_true", help="print what would be written and uploaded; write nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from . import push as push_module
    from .split import SplitError, split_checkpoint

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    enc_id, lm_id = args.push_to_hub or (None, None)
    if args.private and not args.push_to_hub:
        print("error: --private only applies with --push-to-hub", file=sys.stderr)
        return 2
    try:
        result = split_checkpoint(
            args.src, args.encoder_out, args.lm_out, dtype=args.dtype, max_shard_size=args.max_shard_size,
            overwrite=args.overwrite, dry_run=args.dry_run, progress=not args.no_progress, revision=args.revision,
            encoder_repo_id=enc_id, lm_repo_id=lm_id,
        )
    except SplitError as e:
        print(f"error: {e}", file=sys.stderr)
        print("nothing was written.", file=sys.stderr)
        return 2
    print(("[dry run] " if args.dry_run else "") + result.describe())
    if args.push_to_hub:
        lines = push_module.push_split(result.encoder.out, result.lm.out, enc_id, lm_id, private=args.private,
                                       dry_run=args.dry_run)
        for line in lines:
            print(("[dry run] would " if args.dry_run else "pushed: ") + line)
    elif args.dry_run:
        print("[dry run] nothing would be uploaded (no --push-to-hub)")
    return 0
