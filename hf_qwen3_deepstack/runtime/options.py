"""Options of the runtime, shared by `hf-qwen3-deepstack run`, `torchrun -m hf_qwen3_deepstack.launch`,
the demo and the benchmarks: one typed `RuntimeOptions`, from which the command-line flags are made."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from hf_qwen3_deepstack.cli_values import add_option_arguments, option, options_argv, options_from_args


@dataclass
class RuntimeOptions:
    model: str | None = option(None, "checkpoint directory or Hub id (default: the embedded tiny Qwen3-VL-MoE, built "
                                   "once and cached)")
    encoder_model: str | None = option(None, "encoder repo made by `split` (or any checkpoint) for the encoder ranks "
                                           "(default: --model)")
    lm_model: str | None = option(None, "language repo made by `split` (or any checkpoint) for the language ranks "
                                      "(default: --model)")
    requests: str | None = option(None, "JSONL file, one request per line")
    output: str | None = option(None, "JSONL file for the result lines, written by the language leader "
                                    "(default: stdout)")
    encoders: int = option(1, "E: encoder ranks (global ranks 0..E-1)")
    lms: int = option(1, "L: language ranks (global ranks E..E+L-1)")
    max_new_tokens: int = option(32, "new tokens for requests without their own max_new_tokens")
    dtype: str = option("auto", "auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16")
    max_batch_size: int = option(32, "sequences a language rank decodes together (continuous batching)")
    max_batch_tokens: int = option(65536, "KV-cache budget of a language rank, in token slots: the cache is "
                                        "left-padded, so B running sequences take B x the largest prompt + "
                                        "max_new_tokens among them (a request larger than this still runs, alone)")
    encoder_batch_patches: int = option(16384, "vision-tower patches an encoder rank encodes in one call (several "
                                             "requests' images and videos)")
    encoder_batch_requests: int = option(16, "requests an encoder rank encodes in one vision-tower call")
    encoder_cache_mb: int = option(512, "vision-tower outputs an encoder rank keeps for images and videos seen "
                                      "again (LRU, keyed by a hash of the processed pixels); 0: off")
    encoder_slots: int = option(32, "requests the leader hands an encoder rank ahead (queued or being encoded)")
    capacity_tokens: int = option(8192, "receive buffer of a language rank per encoder, in tokens (longer requests "
                                      "arrive in chunks of this size)")
    media_fetch_timeout: float = option(10.0, "seconds to fetch all http(s) images of one request (the server "
                                              "fetches them before dispatch, an encoder before preparing the "
                                              "prompt); a request over it fails alone")
    timeout: float = option(120.0, "seconds a rank may go without a heartbeat (hung or dead) before the job stops, "
                                 "naming it; also bounds each transfer wait")
    threads: int = option(0, "torch threads per rank (0: on CPU, the cores available divided by the ranks on this "
                           "node; on CUDA, torch's default)")
    print_results: bool = option(False, "the language leader also prints readable results")
    no_progress: bool = option(False, "no progress bar")
    quiet: bool = option(False, "no per-rank log lines, no transformers warnings or bars")
    serial: bool = option(False, "one request in the system at a time: dispatch the next when the previous is "
                               "finished (for latency measurements)")
    serial_gap_ms: float = option(0.0, "with --serial: idle time before each request (requests arriving one by one "
                                     "at an idle system)")
    summary_json: str | None = option(None, "also write the summary (throughput, TTFT and latency percentiles, mean "
                                          "batch size, per-rank work) to this JSON file")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RuntimeOptions":
        return options_from_args(cls, args)

    def check(self) -> None:
        """ValueError naming the first option out of range."""
        for name in ("encoders", "lms", "max_new_tokens", "max_batch_size", "max_batch_tokens",
                     "encoder_batch_patches", "encoder_batch_requests", "encoder_slots", "capacity_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.timeout <= 0 or self.media_fetch_timeout <= 0:
            raise ValueError("--timeout and --media-fetch-timeout must be > 0")
        if self.threads < 0 or self.serial_gap_ms < 0 or self.encoder_cache_mb < 0:
            raise ValueError("--threads, --serial-gap-ms and --encoder-cache-mb must be >= 0")

    def argv(self) -> list[str]:
        """Flags for `python -m hf_qwen3_deepstack.launch` reproducing these options."""
        return options_argv(self)


RUN_ONLY = ("requests", "output", "print_results", "summary_json")  # a requests file's options, not serve's


def add_runtime_arguments(parser: argparse.ArgumentParser, *, serving: bool = False) -> None:
    add_option_arguments(parser.add_argument_group("runtime"), RuntimeOptions,
                         required=() if serving else ("requests",), hidden=RUN_ONLY if serving else ())


def needs_default_model(opts: RuntimeOptions | argparse.Namespace) -> bool:
    """True when some role has no checkpoint: neither --model nor its own --encoder-/--lm-model."""
    return opts.model is None and (opts.encoder_model is None or opts.lm_model is None)
