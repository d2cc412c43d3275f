"""`--timeout` bounds every wait through heartbeats: a rank of either role that hangs without dying
(SIGSTOP) ends the job within about the timeout, naming the silent rank; a rank that is busy but
alive (slower per step than the timeout) is not declared dead."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_runtime_token_parity import REPO, rank_pids, read_jsonl, run_runtime, runtime_env, write_jsonl


def _requests(sample_images, tmp_path: Path, n: int, new_tokens: int) -> Path:
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": [
        {"type": "image", "image": str(sample_images[0])}, {"type": "text", "text": f"request {i}"}]}],
        "max_new_tokens": new_tokens} for i in range(n)]
    return write_jsonl(tmp_path / "requests.jsonl", rows)


@pytest.mark.parametrize("stopped,role", [(0, "encoder 0"), (1, "language 0")])
def test_a_stopped_rank_ends_the_job_within_the_timeout_naming_it(tiny_checkpoint_dir, sample_images, tmp_path,
                                                                  stopped, role):
    req_file = _requests(sample_images, tmp_path, n=200, new_tokens=48)
    out_file = tmp_path / "out.jsonl"
    env = runtime_env()
    marker = str(os.getpid() * 10 + stopped)
    env["HF_QWEN3_DEEPSTACK_TEST_ROOT"] = marker
    cmd = [sys.executable, "-m", "hf_qwen3_deepstack.cli", "run", "--model", str(tiny_checkpoint_dir), "--requests",
           str(req_file), "--output", str(out_file), "--threads", "1", "--no-progress", "--timeout", "5",
           "--encoder-slots", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    pids = {}
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if out_file.exists() and out_file.read_text().count("\n") >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        pids = rank_pids(marker)
        assert set(pids) == {0, 1}, pids
        os.kill(pids[stopped], signal.SIGSTOP)
        t0 = time.monotonic()
        _, stderr = proc.communicate(timeout=90)
        elapsed = time.monotonic() - t0
    finally:
        for pid in pids.values():
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, stderr[-3000:]
    assert f"rank {stopped} ({role}) sent no heartbeat" in stderr, stderr[-3000:]
    assert elapsed < 5 + 45, elapsed  # the timeout, one heartbeat round, and the launcher's stop of a stopped process


def test_a_busy_rank_slower_than_the_timeout_is_not_declared_dead(tiny_checkpoint_dir, sample_images, tmp_path):
    req_file = _requests(sample_images, tmp_path, n=2, new_tokens=2)
    env = runtime_env()
    env["HF_QWEN3_DEEPSTACK_FAULT"] = "delay:0:4"  # each vision batch of the encoder takes 4 s: twice the timeout
    proc = run_runtime("run", 1, 1, tiny_checkpoint_dir, req_file, tmp_path / "out.jsonl", "--encoder-batch-requests",
                       "1", "--timeout", "2", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "heartbeat" not in proc.stderr
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "out.jsonl")) == ["r0", "r1"]
