"""`bench transfer` runs end to end and its bytes-on-the-wire table is exact: headers, control
messages, per-token ints and visual rows, measured from the transfer's own counters."""

import re
import subprocess
import sys


def test_bench_transfer_reports_every_table_and_exact_wire_bytes(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "hf_qwen3_deepstack.bench", "transfer", "--sizes", "64KiB,1MiB", "--rounds", "1",
         "--latency-iters", "5", "--bytes-per-point", "1e6", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "bench.md").read_text()
    assert table.strip() == proc.stdout.split("\nchart:")[0].strip()
    lines = table.splitlines()
    throughput = [line for line in lines if line.startswith(("| 64 KB | 8 |", "| 1 MB | 76 |"))]
    cpu = [line for line in lines if line.startswith(("| 64 KB | ", "| 1 MB | ")) and line not in throughput]
    assert len(throughput) == 2 and len(cpu) == 2
    for line in throughput + cpu:  # every measured figure is a positive number
        assert all(float(cell) > 0 for cell in line.strip("| ").split(" | ")[2 if line in throughput else 1:])
    latency = next(line for line in lines if line.startswith("64 KB one-way latency"))
    figures = re.findall(r"(\d+) us", latency)  # ours, raw, and the floor of a resumable receiver
    assert len(figures) == 3 and all(int(f) > 0 for f in figures), latency
    assert "Floor of a resumable receiver" in latency
    # one 1024-token image (S = 1124, K = 3, bf16): data = 1124 tokens x 5 int64 + 1 rope delta + 1024 x 4 x H x 2;
    # plus a header message's header words and trailer per chunk and for the sender's goodbye, and a
    # control message each for the first PULL(NEXT), every chunk's PULL and the final ACK
    from hf_qwen3_deepstack.transfer.protocol import CONTROL_WORDS, HEADER_BYTES

    for hidden in (2048, 4096):
        data = 1124 * 5 * 8 + 8 + 1024 * 4 * hidden * 2
        seeds = 1124 * 4 * hidden * 2
        for cap, chunks in ((1124, 1), (512, 3)):
            ours = data + (HEADER_BYTES + 8) * (chunks + 1) + 8 * CONTROL_WORDS * (chunks + 2)
            row = f"| {cap} | {ours:,} | {data:,} | {seeds:,} | {ours / seeds:.3f} |"
            assert any(line.endswith(row) for line in lines), (row, table)
