"""`bench serve` runs transformers and our runtime on the same mixed requests and reports equal
tokens with positive figures for every mode it ran."""

from __future__ import annotations

import json
import subprocess
import sys

from test_runtime_token_parity import REPO, runtime_env


def test_bench_serve_compares_batched_transformers_with_the_runtime_on_equal_tokens(tiny_checkpoint_dir, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "hf_qwen3_deepstack.bench", "serve", "--model", str(tiny_checkpoint_dir),
           "--num-requests", "6", "--batch", "3", "--modes", "bce", "--threads", "1", "--workdir", str(tmp_path),
           "--json", str(out), "--plot", str(tmp_path / "bench.png")]
    proc = subprocess.run(cmd, cwd=REPO, env=runtime_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["token_ids_equal"] == {"b": True, "c": True, "e": True}
    for mode in "bce":
        figures = report["modes"][mode]
        assert figures["tokens_per_s"] > 0 and 0 < figures["ttft_p50_s"] <= figures["latency_p95_s"]
    assert report["modes"]["b"]["mean_batch"] == 3 and report["modes"]["e"]["mean_batch"] == 1
    assert report["ratios"]["c_over_b"] > 0 and (tmp_path / "bench.png").stat().st_size > 0
    assert "| (c) ours 1E+1L, continuous batching |" in proc.stdout
