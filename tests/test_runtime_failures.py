"""Failure handling of the runtime: bad requests become error lines while the job goes on; a
rank killed mid-run or Ctrl-C ends every rank quickly with a clear message; nothing hangs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_runtime_token_parity import REPO, read_jsonl, run_runtime, runtime_env, write_jsonl


def _msg(*items):
    return [{"role": "user", "content": list(items)}]


def test_bad_requests_become_error_lines(tiny_checkpoint_dir, sample_images, tmp_path):
    square, wide, *_ = sample_images
    unreadable = tmp_path / "unreadable.png"
    unreadable.write_bytes(b"this is not a PNG")
    good = {"type": "text", "text": "Describe it."}
    rows = [
        json.dumps({"id": "ok-1", "messages": _msg({"type": "image", "image": str(square)}, good),
                    "max_new_tokens": 4}),
        json.dumps({"id": "missing-file", "messages": _msg({"type": "image", "image": str(tmp_path / "nope.png")},
                                                           good)}),
        json.dumps({"id": "unreadable-image", "messages": _msg({"type": "image", "image": str(unreadable)}, good)}),
        '{"id": "malformed", "messages": [',  # truncated JSON
        json.dumps({"id": "too-long", "messages": _msg(good), "max_new_tokens": 100_000}),
        json.dumps({"id": "no-messages", "max_new_tokens": 3}),
        json.dumps({"id": "missing-frame", "messages": _msg(
            {"type": "video", "video": [str(square), str(tmp_path / "frame-gone.png")]}, good)}),
        json.dumps({"id": "ok-2", "messages": _msg({"type": "image", "image": str(wide)}, good),
                    "max_new_tokens": 4}),
        "",  # blank lines are skipped
        "[1, 2, 3]",  # not an object: gets a line-number id
        json.dumps({"id": "ok-3", "messages": _msg(good), "max_new_tokens": 3}),
    ]
    req_file = tmp_path / "requests.jsonl"
    req_file.write_text("\n".join(rows) + "\n")
    out_file = tmp_path / "results.jsonl"
    proc = run_runtime("run", 2, 1, tiny_checkpoint_dir, req_file, out_file)
    assert proc.returncode == 3, proc.stderr[-4000:]  # every line written, some requests failed
    assert "some requests failed" in proc.stderr
    results = read_jsonl(out_file)
    ids = [r["id"] for r in results]
    expected_ids = ["ok-1", "missing-file", "unreadable-image", "malformed", "too-long", "no-messages",
                    "missing-frame", "ok-2", "line-10", "ok-3"]
    assert sorted(ids) == sorted(expected_ids)  # every input exactly once
    by_id = {r["id"]: r for r in results}
    for rid in ("ok-1", "ok-2", "ok-3"):
        assert "error" not in by_id[rid] and len(by_id[rid]["token_ids"]) >= 1
    errors = {rid: by_id[rid]["error"] for rid in expected_ids if not rid.startswith("ok")}
    assert "not found" in errors["missing-file"] and "nope.png" in errors["missing-file"]
    assert "unreadable.png" in errors["unreadable-image"] or "identify" in errors["unreadable-image"]
    assert "malformed JSON" in errors["malformed"]
    assert "too long" in errors["too-long"]
    assert "messages" in errors["no-messages"]
    assert "frame-gone.png" in errors["missing-frame"]
    assert "not a JSON object" in errors["line-10"]
    assert "3 ok, 7 errors" in proc.stdout


def _long_requests(sample_images, tmp_path: Path, n: int = 12) -> Path:
    square = sample_images[0]
    rows = [{"id": f"r{i}", "messages": _msg({"type": "image", "image": str(square)},
                                             {"type": "text", "text": f"request {i}"}), "max_new_tokens": 48}
            for i in range(n)]
    return write_jsonl(tmp_path / "requests.jsonl", rows)


def test_rank_killed_mid_run_stops_every_rank(tiny_checkpoint_dir, sample_images, tmp_path):
    """Encoder rank 0 SIGKILLs itself after 3 requests: the job ends fast, non-zero, and says which rank
    died; the language rank, blocked waiting for the dead encoder, is stopped too."""
    req_file = _long_requests(sample_images, tmp_path)
    env = runtime_env()
    env["HF_QWEN3_DEEPSTACK_FAULT"] = "kill:0:3"
    t0 = time.monotonic()
    proc = run_runtime("run", 1, 1, tiny_checkpoint_dir, req_file, tmp_path / "out.jsonl", env=env, timeout=180)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "rank 0 (encoder 0) failed with signal SIGKILL" in proc.stderr, proc.stderr[-3000:]
    # the language rank either saw the dead peer itself (FATAL naming it) or was stopped by the launcher
    assert ("rank 1 (language 0 (leader)): stopping on SIGTERM" in proc.stderr
            or "rank 1 (language 0 (leader)): FATAL: receiving from rank 0 failed" in proc.stderr), proc.stderr[-3000:]
    assert elapsed < 120  # far below --timeout 120 + load time: the agent stopped the waiting rank
    # what was finished before the failure is on disk, each id at most once
    ids = [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")]
    assert len(ids) == len(set(ids)) and len(ids) < 12


def test_language_replica_killed_stops_every_rank(tiny_checkpoint_dir, sample_images, tmp_path):
    """1E+2L under torchrun: the non-leader language rank dies mid-run; every rank ends, non-zero."""
    req_file = _long_requests(sample_images, tmp_path)
    env = runtime_env()
    env["HF_QWEN3_DEEPSTACK_FAULT"] = "kill:2:2"
    proc = run_runtime("torchrun", 1, 2, tiny_checkpoint_dir, req_file, tmp_path / "out.jsonl", env=env,
                       timeout=180)
    assert proc.returncode != 0
    assert "Signal 9 (SIGKILL)" in proc.stderr or "SIGKILL" in proc.stderr, proc.stderr[-3000:]
    # the survivors either saw the broken connection themselves (FATAL ... a peer rank died) or were
    # stopped by torchrun (stopping on SIGTERM); both say so
    for who in ("rank 0 (encoder 0)", "rank 1 (language 0 (leader))"):
        assert f"{who}: stopping on SIGTERM" in proc.stderr or f"{who}: FATAL" in proc.stderr, proc.stderr[-3000:]


def test_ctrl_c_stops_every_rank(tiny_checkpoint_dir, sample_images, tmp_path):
    req_file = _long_requests(sample_images, tmp_path, n=40)
    out_file = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "hf_qwen3_deepstack.cli", "run", "--model", str(tiny_checkpoint_dir),
           "--requests", str(req_file), "--output", str(out_file), "--threads", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=runtime_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if out_file.exists() and out_file.read_text().count("\n") >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the whole foreground group
        t0 = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        assert time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr.lower(), stderr[-3000:]
    time.sleep(1)
    try:  # no rank survives
        os.killpg(proc.pid, 0)
        survivors = True
    except ProcessLookupError:
        survivors = False
    assert not survivors


def test_http_images_of_a_requests_file_are_fetched_within_the_timeout(tiny_checkpoint_dir, sample_images,
                                                                        media_host, tmp_path):
    """An image by URL gives the tokens of the same image by path; a host that never answers fails
    only its own request, after --media-fetch-timeout, naming the URL's place."""
    files, silent = media_host
    square = sample_images[0]
    text = {"type": "text", "text": "Describe it."}
    rows = [{"id": "by-path", "messages": _msg({"type": "image", "image": str(square)}, text), "max_new_tokens": 5},
            {"id": "silent", "messages": _msg(text, {"type": "image", "image": f"{silent}/never.png"})},
            {"id": "by-url", "messages": _msg({"type": "image", "image": f"{files}/{square.name}"}, text),
             "max_new_tokens": 5}]
    req_file, out_file = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
    write_jsonl(req_file, rows)
    t0 = time.monotonic()
    proc = run_runtime("run", 1, 1, tiny_checkpoint_dir, req_file, out_file, "--media-fetch-timeout", "2")
    assert proc.returncode == 3, proc.stderr[-4000:]
    by_id = {r["id"]: r for r in read_jsonl(out_file)}
    assert by_id["by-url"]["token_ids"] == by_id["by-path"]["token_ids"] != []
    error = by_id["silent"]["error"]
    assert "could not be fetched within 2 s" in error and "messages[0].content[1].image" in error, error
    assert time.monotonic() - t0 < 120
