"""Shared, generic fixtures. Keep this file small: helpers for one area live in that area's tests."""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading
import warnings

import psutil
import pytest

PR_SET_CHILD_SUBREAPER = 36


def pytest_configure(config):
    # Rank processes whose launcher a timed-out test killed are re-parented to pytest, not to init,
    # so that `_no_stray_processes` can find and stop them.
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@pytest.fixture(scope="module", autouse=True)
def _no_stray_processes():
    """Processes a module's tests left running (the ranks of a torchrun that timed out) are killed at
    the module's end, so they cannot load the cores under the tests after it."""
    yield
    strays = [p for p in psutil.Process().children(recursive=True) if _stray(p)]
    names = "; ".join(" ".join(_cmdline(p))[:120] for p in strays)
    for p in strays:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    for p in strays:
        try:
            os.waitpid(p.pid, 0)  # adopted orphans are ours to reap
        except ChildProcessError:
            pass  # a direct child: its Popen reaps it
    if strays:
        warnings.warn(f"killed {len(strays)} process(es) left running: {names}")


MULTIPROCESSING_HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")  # live all session


def _stray(p: psutil.Process) -> bool:
    try:
        cmdline = " ".join(p.cmdline())
        return p.status() != psutil.STATUS_ZOMBIE and not any(h in cmdline for h in MULTIPROCESSING_HELPERS)
    except psutil.Error:
        return False


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory):
    """The complete tiny Qwen3-VL-MoE checkpoint (weights + processor files), once per session."""
    from hf_qwen3_deepstack.tiny_checkpoint.build import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint") / "tiny", seed=0)


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory):
    """[square_64x64.png, wide_96x64.png, landscape_128x96.png, frame_0.png .. frame_3.png]."""
    from hf_qwen3_deepstack.tiny_checkpoint.build import write_sample_images

    return write_sample_images(tmp_path_factory.mktemp("sample-images"))


@pytest.fixture(scope="session")
def media_host(sample_images):
    """An HTTP server with the sample images, and a TCP port that accepts and never answers."""
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    files = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(sample_images[0].parent)))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: [held.append(silent.accept()[0]) for _ in range(8)], daemon=True).start()
    yield f"http://127.0.0.1:{files.server_address[1]}", f"http://127.0.0.1:{silent.getsockname()[1]}"
    files.shutdown()
    for c in held:
        c.close()
    silent.close()
