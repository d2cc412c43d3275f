"""Spawn small gloo groups for the transfer tests, with a hard wall-clock limit.

`run_ranks(fn, world_size, args, timeout)` starts `world_size` spawned processes that join a gloo
group on 127.0.0.1 (free port) and call `fn(rank, *args)`; it returns the list of per-rank return
values, re-raises the first failure with its traceback, and kills everything (failing the test)
if the ranks do not finish within `timeout` seconds, so a hang never blocks CI.
"""

from __future__ import annotations

import datetime
import os
import queue
import socket
import time
import traceback

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Box:
    """A tensor as plain bytes: torch's queue pickler would share storage through file
    descriptors that die with the (os._exit-ing) rank."""

    def __init__(self, t: torch.Tensor):
        t = t.detach().cpu().contiguous()
        self.dtype, self.shape = t.dtype, tuple(t.shape)
        self.data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""

    def unbox(self) -> torch.Tensor:
        if not self.data:
            return torch.empty(self.shape, dtype=self.dtype)
        return torch.frombuffer(bytearray(self.data), dtype=torch.uint8).view(self.dtype).reshape(self.shape)


def _map(value, f):
    if isinstance(value, (torch.Tensor, _Box)):
        return f(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map(v, f) for v in value)
    if isinstance(value, dict):
        return {k: _map(v, f) for k, v in value.items()}
    return value


def _entry(fn, rank: int, world_size: int, port: int, args: tuple, results) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60))
        dist.barrier()  # connect the pairs before any threads issue point-to-point ops
        value = fn(rank, *args)
        results.put((rank, True, _map(value, _Box)))
    except BaseException:  # noqa: BLE001 - reported to the parent
        results.put((rank, False, traceback.format_exc()))
    finally:
        # Flush the result, then leave without destructors: a test that left a receive posted
        # (error/timeout tests do, on purpose) would otherwise abort in gloo's teardown.
        results.close()
        results.join_thread()
        os._exit(0)


def _context():
    # forkserver: the server imports torch and the package once, every group forks from it
    # (spawn would re-import transformers in each rank, ~10 s on 2 cores).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", "hf_qwen3_deepstack.transfer"])
    return ctx


def run_ranks(fn, world_size: int = 2, args: tuple = (), timeout: float = 60.0,
              allow_missing: tuple[int, ...] = ()) -> list:
    """`allow_missing`: ranks that may die without reporting (their result is None)."""
    ctx = _context()
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world_size, port, args, results), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    out: dict[int, object] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(out) < world_size - len(allow_missing):
            try:
                rank, ok, value = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    raise AssertionError(f"ranks {sorted(set(range(world_size)) - set(out))} did not finish "
                                         f"within {timeout} s (hang?)") from None
                continue
            if not ok:
                raise AssertionError(f"rank {rank} failed:\n{value}")
            out[rank] = _map(value, lambda b: b.unbox())
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    return [out.get(r) for r in range(world_size)]


IMAGE_ID, VIDEO_ID = 151655, 151656


def random_output(seed: int, batch: int, seq: int, n_visual: int, hidden: int = 16, levels: int = 3,
                  dtype: torch.dtype = torch.float32, mask_dtype: torch.dtype | None = torch.int64,
                  token_ids: tuple[int | None, int | None] = (IMAGE_ID, VIDEO_ID)):
    """A random, internally consistent EncoderOutput with `n_visual` placeholders at random positions."""
    from hf_qwen3_deepstack.encoder_output import EncoderOutput

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (batch * seq,), generator=g)
    placeholders = [t for t in token_ids if t is not None]
    if n_visual:
        where = torch.randperm(batch * seq, generator=g)[:n_visual]
        choice = torch.randint(0, len(placeholders), (n_visual,), generator=g)
        ids[where] = torch.tensor(placeholders)[choice]
    mask = None
    if mask_dtype is not None:
        mask = torch.randint(0, 2, (batch, seq), generator=g).to(mask_dtype)
    return EncoderOutput(
        input_ids=ids.view(batch, seq),
        position_ids=torch.randint(0, 10_000, (3, batch, seq), generator=g),
        rope_deltas=torch.randint(-500, 500, (batch, 1), generator=g),
        visual_embeds=torch.randn(n_visual, hidden, generator=g).to(dtype),
        deepstack_visual_embeds=torch.randn(levels, n_visual, hidden, generator=g).to(dtype),
        attention_mask=mask,
        image_token_id=token_ids[0],
        video_token_id=token_ids[1],
    )


def assert_same(a, b, where: str = "") -> None:
    """Every field bit-identical, dtype preserved."""
    for name in ("input_ids", "position_ids", "rope_deltas", "visual_embeds", "deepstack_visual_embeds",
                 "attention_mask"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, f"{where} {name}: {x is None} vs {y is None}"
            continue
        assert x.dtype == y.dtype, f"{where} {name}: dtype {x.dtype} != {y.dtype}"
        assert x.shape == y.shape, f"{where} {name}: shape {tuple(x.shape)} != {tuple(y.shape)}"
        assert torch.equal(x, y), f"{where} {name}: values differ"
    assert a.image_token_id == b.image_token_id and a.video_token_id == b.video_token_id, where
