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
