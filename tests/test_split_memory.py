"""The split streams: its peak RSS stays within ~1.5x the largest source shard over the
interpreter + imports baseline, measured on a ~150 MB checkpoint of ~38 MB shards."""

from __future__ import annotations

import json
import re

import torch
from safetensors.torch import save_file

from hf_qwen3_deepstack.tiny_checkpoint.model import tiny_vl_config

from _isolated_python import run_repo_python

SHARD_BYTES = 40_000_000

# One process: the small split first (interpreter, imports, meta model, every code path) gives
# the baseline peak; the big split's peak on top of it is what streaming must bound.
MEASURE = r"""
import sys
from hf_qwen3_deepstack.hub import split_checkpoint

def hwm():
    status = open("/proc/self/status").read()
    return int([l.split()[1] for l in status.splitlines() if l.startswith("VmHWM")][0]) * 1024

small, big, out = sys.argv[1:4]
split_checkpoint(small, out + "/small-enc", out + "/small-lm", max_shard_size="40MB", progress=False)
print("BASELINE", hwm())
split_checkpoint(big, out + "/big-enc", out + "/big-lm", max_shard_size="40MB", progress=False)
print("PEAK", hwm())
"""


def write_synthetic_checkpoint(path, **text_overrides) -> int:
    """Every tensor of a Qwen3-VL-MoE config (transformers expert layout, so the split must
    transpose), written straight with safetensors into ~40 MB shards; returns the largest shard size."""
    from transformers import Qwen3VLMoeForConditionalGeneration

    config = tiny_vl_config(**text_overrides)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Qwen3VLMoeForConditionalGeneration(config).state_dict().items()}
    path.mkdir(parents=True)
    config.save_pretrained(path)
    shards, current, size = [], {}, 0
    g = torch.Generator().manual_seed(0)
    for key, shape in shapes.items():
        tensor = torch.rand(shape, generator=g)
        if current and size + tensor.nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[key] = tensor
        size += tensor.nbytes
    shards.append(current)
    weight_map, largest = {}, 0
    for i, tensors in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, path / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
        largest = max(largest, (path / name).stat().st_size)
    total = sum(t.nbytes for s in shards for t in s.values())
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return largest


def test_peak_memory_is_bounded_by_a_shard(tmp_path):
    big = tmp_path / "big"
    # 128 experts x (64 -> 2x384): gate_up 25 MB + down 12.6 MB per layer, 4 layers, ~150 MB in all
    largest = write_synthetic_checkpoint(big, num_experts=128, moe_intermediate_size=384)
    n_shards = len(list(big.glob("*.safetensors")))
    total = sum(p.stat().st_size for p in big.glob("*.safetensors"))
    assert n_shards >= 4 and total > 140_000_000

    small = tmp_path / "small"
    write_synthetic_checkpoint(small)  # same code path, ~2 MB: interpreter + imports baseline

    proc = run_repo_python(["-c", MEASURE, str(small), str(big), str(tmp_path)])
    baseline = int(re.search(r"BASELINE (\d+)", proc.stdout)[1])
    peak = int(re.search(r"PEAK (\d+)", proc.stdout)[1])
    extra = peak - baseline
    print(f"baseline {baseline / 1e6:.0f} MB, split peak {peak / 1e6:.0f} MB, extra {extra / 1e6:.0f} MB, "
          f"largest shard {largest / 1e6:.0f} MB, checkpoint {total / 1e6:.0f} MB in {n_shards} shards")
    assert extra <= 1.5 * largest, (extra, largest)
    # the output really was written (and transposed): one expert tensor in the Hub layout
    index = json.loads((tmp_path / "big-lm" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 4
