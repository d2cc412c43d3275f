"""SIGINT or SIGTERM at any point of `split --overwrite` leaves the output paths holding either
the old folders or both new repos (never a mix, never a half-written one), removes every
temporary folder, and the command prints one line instead of a traceback. Output folders get
the umask's permissions."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_qwen3_deepstack.hub import split as split_module
from hf_qwen3_deepstack.hub.interruption import Interrupted
from hf_qwen3_deepstack.hub.split import split_checkpoint
from hf_qwen3_deepstack.tiny_checkpoint.model import write_tiny_vl_checkpoint

REPO = Path(__file__).resolve().parents[1]
HUB_DIR = REPO / "hf_qwen3_deepstack" / "hub"
TRACED_FILES = {str(HUB_DIR / name) for name in ("split.py", "safetensors_io.py", "model_card.py", "remote_code.py", "interruption.py")}
HALVES = ("enc", "lm")
REAL_WRITE_AND_MOVE = split_module._write_and_move


def snapshot(folder: Path) -> dict[str, str] | None:
    if not folder.exists():
        return None
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """The source, pristine old outputs (another dtype and sharding) and the new outputs' contents."""
    root = tmp_path_factory.mktemp("interrupt")
    src = write_tiny_vl_checkpoint(root / "src", seed=0, max_shard_size="300KB")
    split_checkpoint(src, root / "old" / "enc", root / "old" / "lm", progress=False, dtype="float16",
                     max_shard_size="100KB")
    split_checkpoint(src, root / "new" / "enc", root / "new" / "lm", progress=False)
    old = {h: snapshot(root / "old" / h) for h in HALVES}
    new = {h: snapshot(root / "new" / h) for h in HALVES}
    assert old != new
    return src, root / "old", old, new


def fresh_outputs(repos, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(repos[1], out)


class SignalAtLine:
    """Traces the split's own code while it writes and moves the repos; at line event `at` it sends
    `sig` to this process (at=None only counts). Records the function of every event."""

    def __init__(self, sig: int, at: int | None):
        self.sig, self.at, self.events = sig, at, []

    def _local(self, frame, event, arg):
        if event == "line":
            self.events.append(frame.f_code.co_name)
            if len(self.events) == self.at:
                os.kill(os.getpid(), self.sig)
        return self._local

    def _global(self, frame, event, arg):
        return self._local if frame.f_code.co_filename in TRACED_FILES else None

    def wrap(self, write_and_move):
        def traced(*args, **kwargs):
            sys.settrace(self._global)
            try:
                return write_and_move(*args, **kwargs)
            finally:
                sys.settrace(None)
        return traced


def run_traced(repos, out, monkeypatch, tracer):
    monkeypatch.setattr(split_module, "_write_and_move", tracer.wrap(REAL_WRITE_AND_MOVE))
    return split_checkpoint(repos[0], out / "enc", out / "lm", progress=False, overwrite=True)


def test_signals_at_every_point_of_an_overwrite_leave_old_or_new_outputs(repos, tmp_path, monkeypatch):
    out = tmp_path / "out"
    fresh_outputs(repos, out)
    counter = SignalAtLine(signal.SIGINT, at=None)
    run_traced(repos, out, monkeypatch, counter)
    total = len(counter.events)
    # every line of the function that writes, renames and cleans up; a spread over the rest
    points = sorted({i + 1 for i, name in enumerate(counter.events) if name == "_write_and_move"}
                    | set(range(1, total + 1, max(1, total // 40))))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    seen = {"old": 0, "new": 0}
    for n, at in enumerate(points):
        sig = (signal.SIGINT, signal.SIGTERM)[n % 2]
        fresh_outputs(repos, out)
        with pytest.raises(Interrupted) as caught:
            run_traced(repos, out, monkeypatch, SignalAtLine(sig, at))
        e = caught.value
        assert e.signum == sig and e.outputs in seen, (at, e.outputs)
        expected = repos[2] if e.outputs == "old" else repos[3]
        assert {h: snapshot(out / h) for h in HALVES} == expected, (at, counter.events[at - 1], e.outputs)
        assert sorted(os.listdir(out)) == ["enc", "lm"], (at, os.listdir(out))  # no temporary folder left
        assert {s: signal.getsignal(s) for s in handlers} == handlers
        seen[e.outputs] += 1
    assert seen["old"] > 10 and seen["new"] >= 1, seen


DRIVER = """
import sys, time
from hf_qwen3_deepstack.hub import split
real = split.write_shard
def slow(*args, **kwargs):
    time.sleep(0.3)
    return real(*args, **kwargs)
split.write_shard = slow
from hf_qwen3_deepstack import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupted_split_command_prints_one_line_and_keeps_the_old_outputs(repos, tmp_path, sig, code):
    out = tmp_path / "out"
    fresh_outputs(repos, out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "split", str(repos[0]), "--encoder-out", str(out / "enc"),
         "--lm-out", str(out / "lm"), "--overwrite", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not any(name.startswith(".enc.split-") for name in os.listdir(out)):  # writing has begun
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert stderr.strip().splitlines() == [
        f"[hf-qwen3-deepstack] split interrupted by {signal.Signals(sig).name}: the output folders are unchanged"]
    assert {h: snapshot(out / h) for h in HALVES} == repos[2]
    assert sorted(os.listdir(out)) == ["enc", "lm"]


def test_output_folders_get_the_umask_permissions(repos, tmp_path):
    previous = os.umask(0o027)
    try:
        split_checkpoint(repos[0], tmp_path / "enc", tmp_path / "lm", progress=False)
    finally:
        os.umask(previous)
    for half in HALVES:
        assert (tmp_path / half).stat().st_mode & 0o777 == 0o750
        assert (tmp_path / half / "config.json").stat().st_mode & 0o777 == 0o640


def test_tiny_checkpoint_folder_gets_the_umask_permissions(tmp_path):
    from hf_qwen3_deepstack.tiny_checkpoint.build import write_tiny_checkpoint

    previous = os.umask(0o027)
    try:
        path = write_tiny_checkpoint(tmp_path / "tiny", seed=0)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o750


def test_a_failed_rename_while_swapping_in_puts_the_old_folders_back(repos, tmp_path, monkeypatch):
    out = tmp_path / "out"
    fresh_outputs(repos, out)
    real_rename = Path.rename

    def rename(self, target):
        swapping_in = self.name.startswith(".lm.split-") and not self.name.startswith(".lm.split-old-")
        if swapping_in and Path(target).name == "lm":  # the new language repo, the last rename
            raise OSError("rename failed (simulated)")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        split_checkpoint(repos[0], out / "enc", out / "lm", progress=False, overwrite=True)
    assert {h: snapshot(out / h) for h in HALVES} == repos[2]
    assert sorted(os.listdir(out)) == ["enc", "lm"]
