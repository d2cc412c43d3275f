"""`hf-qwen3-deepstack split SRC --encoder-out DIR --lm-out DIR [...]`."""

from __future__ import annotations

import argparse
import logging
import sys

from ..cli_values import DTYPE_CHOICES, LOG_PREFIX, HelpFormatter

DESCRIPTION = """\
Split a Qwen3-VL-MoE or dense Qwen3-VL checkpoint (local folder or Hub id; the family comes from
its model_type) into two repos that load with plain transformers and trust_remote_code=True: the
vision encoder (+ processor) and the DeepStack language model (+ tokenizer). Tensors are streamed
shard by shard; nothing is uploaded unless --push-to-hub is given. Interrupted (Ctrl-C, SIGTERM),
it leaves the output folders as they were; once both repos are written they replace the outputs
together."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = HelpFormatter
    parser.add_argument("src", metavar="SRC", help="local Qwen3-VL(-MoE) checkpoint folder or Hub repo id (ORG/NAME)")
    parser.add_argument("--encoder-out", required=True, metavar="DIR", help="output folder of the encoder repo")
    parser.add_argument("--lm-out", required=True, metavar="DIR", help="output folder of the language-model repo")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="floating-point dtype of the written weights; auto keeps each tensor's stored dtype")
    parser.add_argument("--max-shard-size", default="5GB",
                        help="largest output shard: 5GB, 500MB (powers of 1000), 2GiB (powers of 1024) or bytes")
    parser.add_argument("--revision", default=None,
                        help="Hub revision of SRC: branch, tag or commit (default: the repo's main branch)")
    parser.add_argument("--base-model", default=None, metavar="ORG/NAME",
                        help="Hub id written as base_model in the model cards (default: SRC's Hub id when SRC is "
                             "one or lies in the Hub cache; none for another local folder)")
    parser.add_argument("--push-to-hub", nargs=2, metavar=("ENCODER_REPO", "LM_REPO"), default=None,
                        help="after writing, upload the encoder folder to the Hub repo ENCODER_REPO and the "
                             "language-model folder to LM_REPO (two ORG/NAME ids, created if missing); the model "
                             "cards name them (default: no upload)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repos as private")
    parser.add_argument("--overwrite", action="store_true", help="replace existing non-empty output folders")
    parser.add_argument("--dry-run", action="store_true", help="print what would be written and uploaded; write nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from . import push as push_module
    from .interruption import Interrupted, signals_raise_interrupted
    from .split import SplitError, split_checkpoint

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    enc_id, lm_id = args.push_to_hub or (None, None)
    if args.private and not args.push_to_hub:
        print("error: --private only applies with --push-to-hub", file=sys.stderr)
        return 2
    try:
        with signals_raise_interrupted():
            return _split_and_push(args, enc_id, lm_id, push_module, split_checkpoint)
    except SplitError as e:
        print(f"error: {e}", file=sys.stderr)
        print("nothing was written.", file=sys.stderr)
        return 2
    except Interrupted as e:
        state = {"old": "the output folders are unchanged",
                 "new": "both new repos are complete and in place"
                        + ("; the upload may be incomplete" if args.push_to_hub else "")}.get(e.outputs, "stopped")
        print(f"{LOG_PREFIX} split interrupted by {e.signal_name}: {state}", file=sys.stderr, flush=True)
        return e.exit_code


def _split_and_push(args, enc_id, lm_id, push_module, split_checkpoint) -> int:
    from .interruption import Interrupted

    result = split_checkpoint(
        args.src, args.encoder_out, args.lm_out, dtype=args.dtype, max_shard_size=args.max_shard_size,
        overwrite=args.overwrite, dry_run=args.dry_run, progress=not args.no_progress, revision=args.revision,
        encoder_repo_id=enc_id, lm_repo_id=lm_id, base_model=args.base_model,
    )
    print(("[dry run] " if args.dry_run else "") + result.describe())
    if args.push_to_hub:
        try:
            lines = push_module.push_split(result.encoder.out, result.lm.out, enc_id, lm_id, private=args.private,
                                           dry_run=args.dry_run)
        except Interrupted as e:
            e.outputs = "new"
            raise
        for line in lines:
            print(("[dry run] would " if args.dry_run else "pushed: ") + line)
    elif args.dry_run:
        print("[dry run] nothing would be uploaded (no --push-to-hub)")
    return 0
