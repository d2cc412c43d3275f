"""Options of the runtime, shared by `hf-qwen3-deepstack run`, `torchrun -m hf_qwen3_deepstack.launch`,
the demo and the benchmarks: one typed `RuntimeOptions`, from which the command-line flags are made."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields


def _opt(default, help: str, **argparse_kwargs):
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class RuntimeOptions:
    model: str | None = _opt(None, "checkpoint directory or Hub id (default: the embedded tiny Qwen3-VL-MoE, built "
                                   "once and cached)")
    encoder_model: str | None = _opt(None, "encoder repo made by `split` (or any checkpoint) for the encoder ranks "
                                           "(default: --model)")
    lm_model: str | None = _opt(None, "language repo made by `split` (or any checkpoint) for the language ranks "
                                      "(default: --model)")
    requests: str | None = _opt(None, "JSONL file, one request per line")
    output: str | None = _opt(None, "JSONL file for the result lines, written by the language leader "
                                    "(default: stdout)")
    encoders: int = _opt(1, "E: encoder ranks (global ranks 0..E-1)")
    lms: int = _opt(1, "L: language ranks (global ranks E..E+L-1)")
    max_new_tokens: int = _opt(32, "new tokens for requests without their own max_new_tokens")
    dtype: str = _opt("auto", "auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16")
    max_batch_size: int = _opt(32, "sequences a language rank decodes together (continuous batching)")
    max_batch_tokens: int = _opt(65536, "KV-cache budget of a language rank, in tokens: each running sequence "
                                        "reserves its prompt plus its max_new_tokens (a request larger than this "
                                        "still runs, alone)")
    encoder_batch_patches: int = _opt(16384, "vision-tower patches an encoder rank encodes in one call (several "
                                             "requests' images and videos)")
    encoder_batch_requests: int = _opt(16, "requests an encoder rank encodes in one vision-tower call")
    encoder_cache_mb: int = _opt(512, "vision-tower outputs an encoder rank keeps for images and videos seen "
                                      "again (LRU, keyed by a hash of the processed pixels); 0: off")
    encoder_slots: int = _opt(32, "requests the leader hands an encoder rank ahead (queued or being encoded)")
    capacity_tokens: int = _opt(8192, "receive buffer of a language rank per encoder, in tokens (longer requests "
                                      "arrive in chunks of this size)")
    timeout: float = _opt(120.0, "seconds a rank may go without a heartbeat (hung or dead) before the job stops, "
                                 "naming it; also bounds each transfer wait")
    threads: int = _opt(0, "torch threads per rank (0: on CPU, the cores available divided by the ranks on this "
                           "node; on CUDA, torch's default)")
    print_results: bool = _opt(False, "the language leader also prints readable results")
    no_progress: bool = _opt(False, "no progress bar")
    quiet: bool = _opt(False, "no per-rank log lines, no transformers warnings or bars")
    serial: bool = _opt(False, "one request in the system at a time: dispatch the next when the previous is "
                               "finished (for latency measurements)")
    serial_gap_ms: float = _opt(0.0, "with --serial: idle time before each request (requests arriving one by one "
                                     "at an idle system)")
    summary_json: str | None = _opt(None, "also write the summary (throughput, TTFT and latency percentiles, mean "
                                          "batch size, per-rank work) to this JSON file")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RuntimeOptions":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def check(self) -> None:
        """ValueError naming the first option out of range."""
        for name in ("encoders", "lms", "max_new_tokens", "max_batch_size", "max_batch_tokens",
                     "encoder_batch_patches", "encoder_batch_requests", "encoder_slots", "capacity_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.timeout <= 0 or self.threads < 0 or self.serial_gap_ms < 0 or self.encoder_cache_mb < 0:
            raise ValueError("--timeout must be > 0; --threads, --serial-gap-ms and --encoder-cache-mb >= 0")

    def argv(self) -> list[str]:
        """Flags for `python -m hf_qwen3_deepstack.launch` reproducing these options."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if f.type == "bool" or isinstance(value, bool):
                out += [flag] if value else []
            elif value is not None:
                out += [flag, str(value)]
        return out

    def replace(self, **changes) -> "RuntimeOptions":
        return dataclasses.replace(self, **changes)


def add_runtime_arguments(parser: argparse.ArgumentParser, *, requests_required: bool = True) -> None:
    g = parser.add_argument_group("runtime")
    for f in fields(RuntimeOptions):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if f.type == "bool":
            g.add_argument(flag, action="store_true", help=help_text)
            continue
        kind = {"int": int, "float": float}.get(f.type, str)
        shown = "" if f.default is None else " (default: %(default)s)"
        required = f.name == "requests" and requests_required
        g.add_argument(flag, type=kind, default=f.default, required=required, help=help_text + shown)


def needs_default_model(opts: RuntimeOptions | argparse.Namespace) -> bool:
    """True when some role has no checkpoint: neither --model nor its own --encoder-/--lm-model."""
    return opts.model is None and (opts.encoder_model is None or opts.lm_model is None)
