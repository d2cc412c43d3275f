"""`close()` on both ends, then `dist.destroy_process_group()` at once, exits cleanly.

Processes are spawned and exit normally (as under torchrun), several times: before `close()`
waited for its own last messages, the group was sometimes destroyed while a thread still waited
on one, and gloo aborted the process ("terminate called without an active exception")."""

import subprocess
import sys
import textwrap

ROUNDS = 6

SCRIPT = textwrap.dedent('''
    import os, socket, sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    def rank_main(rank, port):
        from hf_qwen3_deepstack.encoder_output import EncoderOutput
        from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender, PeerClosed

        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
        dist.init_process_group("gloo", rank=rank, world_size=2)
        s, n = 120, 100
        ids = torch.zeros(1, s, dtype=torch.int64)
        ids[0, :n] = 7
        out = EncoderOutput(ids, torch.zeros(3, 1, s, dtype=torch.int64), torch.zeros(1, 1, dtype=torch.int64),
                            torch.randn(n, 256), torch.randn(3, n, 256), image_token_id=7)
        if rank == 0:
            tx = EncoderOutputSender(1, timeout=30)
            for i in range(3):
                tx.send(i, out)
            tx.close()
        else:
            rx = EncoderOutputReceiver(0, capacity_tokens=32, timeout=30)
            got = 0
            try:
                while True:
                    rx.recv()
                    got += 1
            except PeerClosed:
                pass
            rx.close()
            assert got == 3, got
        dist.destroy_process_group()  # no barrier: close() must have left nothing in flight

    if __name__ == "__main__":
        failures = []
        for _ in range(int(sys.argv[1])):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            try:
                mp.spawn(rank_main, args=(port,), nprocs=2)
            except Exception as e:
                failures.append(f"{type(e).__name__}: {e}")
        print("failures:", failures)
        sys.exit(1 if failures else 0)
''')


def test_close_then_destroy_process_group_exits_cleanly_every_time(tmp_path):
    script = tmp_path / "shutdown_ranks.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(ROUNDS)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "failures: []" in proc.stdout


CAP = 16


def _fails_then_closes(tx, handle):
    """Sender side: `handle` must fail with PeerClosed (the receiver closed first); then time
    `tx.close()`. Returns (close seconds, chunks sent)."""
    import time

    from hf_qwen3_deepstack.transfer import PeerClosed

    try:
        handle.wait()
        raise AssertionError(f"request {handle.request_id} completed although the receiver closed")
    except PeerClosed:
        pass
    t0 = time.monotonic()
    tx.close()
    return time.monotonic() - t0, tx.stats.chunks_sent


def _close_mid_request(rank):
    """The receiver takes chunk 0 of 6, then closes; the sender must fail the request with
    PeerClosed and close promptly (nothing of it stays pending)."""
    import time

    import torch
    from _dist import random_output

    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    out = random_output(5, 1, 6 * CAP, 50, hidden=64)
    if rank == 0:
        tx = EncoderOutputSender(1, timeout=10)
        return _fails_then_closes(tx, tx.isend(5, out))
    rx = EncoderOutputReceiver(0, capacity_tokens=CAP, timeout=10)
    chunk = next(rx.recv_chunks())
    assert chunk.token_offset == 0 and torch.equal(chunk.input_ids, out.input_ids.reshape(-1)[:CAP])
    rx.close()
    time.sleep(4)  # stay connected: a send left pending would now hold the sender's close()
    return rx.interrupted


def test_closing_mid_request_fails_it_and_leaves_nothing_pending():
    from _dist import run_ranks

    (close_s, chunks_sent), interrupted = run_ranks(_close_mid_request, timeout=90)
    assert interrupted is None
    assert chunks_sent == 1  # only chunk 0 was pulled
    assert close_s < 3  # a send still pending would hold close() until its 10 s deadline


def _close_with_next_request_described(rank):
    """The receiver takes request 0, then closes while request 1's first header is on its way
    (asked for with request 0's last pull): the sender fails request 1 with PeerClosed and closes
    promptly."""
    import time

    from _dist import assert_same, random_output

    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    outs = [random_output(6, 1, 2 * CAP, 10, hidden=64), random_output(7, 1, 5 * CAP, 40, hidden=64)]
    if rank == 0:
        tx = EncoderOutputSender(1, timeout=10)
        handles = [tx.isend(i, out) for i, out in enumerate(outs)]
        handles[0].wait()
        return _fails_then_closes(tx, handles[1])
    rx = EncoderOutputReceiver(0, capacity_tokens=CAP, timeout=10)
    rid, got = rx.recv()
    assert rid == 0
    assert_same(got, outs[0])
    time.sleep(0.5)  # request 1's first header is sent meanwhile
    rx.close()
    time.sleep(4)  # stay connected: a send left pending would now hold the sender's close()
    return rid


def test_closing_with_the_next_request_described_leaves_nothing_pending():
    from _dist import run_ranks

    (close_s, chunks_sent), _ = run_ranks(_close_with_next_request_described, timeout=90)
    assert chunks_sent == 2  # request 0; nothing of request 1's rows
    assert close_s < 3
