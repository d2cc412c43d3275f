"""What each of the two ranks of the transfer check runs (rank 0 sends, rank 1 receives and
verifies), through the public transfer API only. Both ranks build the same deterministic payloads,
so the receiver compares what arrived with its own copy, bit for bit.

Steps, in order, each a dict of figures from each rank (the receiver's carry the verdict):
  1-3. bit-exact delivery at edge sizes: one chunk (exactly the capacity), many chunks (B=2, last
       one partial), no visual rows (text only, fp32);
  4.   resume: the consumer raises on chunk 2 of a many-chunk request; `resume(request_id)` goes on
       from the acknowledged offset and the reassembled request is bit-exact;
  5.   a receive that times out (`TransferTimeout`, silent sender) and the next `recv()` delivering
       the request bit-exact once it is sent;
  6.   throughput: our send/recv against raw `dist.send`/`dist.recv` of one tensor of the same bytes.
Steps 1-5 share one sender/receiver pair on one group, step 6 uses a pair on a second group.
"""

from __future__ import annotations

import datetime
import os
import time
import traceback
from dataclasses import dataclass

import torch
import torch.distributed as dist

IMAGE_TOKEN_ID, VIDEO_TOKEN_ID = 151655, 151656
EDGE_HIDDEN, EDGE_LEVELS = 64, 3
THROUGHPUT_HIDDEN, THROUGHPUT_LEVELS = 2048, 3  # Qwen3-VL-30B-A3B's width and deepstack levels
THROUGHPUT_CAPACITY = 8192  # the runtime's default receive capacity
TIMEOUT_PROBE_S, SENDER_SILENCE_S = 0.5, 2.0


@dataclass(frozen=True)
class TransferLane:
    """One backend to check: gloo between CPU processes, or NCCL (+ gloo for headers) between 2 GPUs."""

    backend: str  # torch.distributed backend string
    device_type: str  # cpu | cuda
    capacity_tokens: int = 64
    throughput_bytes: int = 16 << 20
    throughput_reps: int = 8
    timeout_s: float = 30.0

    @property
    def name(self) -> str:
        return "nccl cuda" if self.device_type == "cuda" else "gloo cpu"


@dataclass(frozen=True)
class Payload:
    name: str
    batch: int
    seq: int
    visual: int
    dtype: torch.dtype
    seed: int
    hidden: int = EDGE_HIDDEN
    levels: int = EDGE_LEVELS
    token_major: bool = False  # rows as one (N, 1+K, H) block, as the encoder makes them

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def build(self):
        """A deterministic, internally consistent EncoderOutput (CPU)."""
        from hf_qwen3_deepstack.encoder_output import EncoderOutput

        g = torch.Generator().manual_seed(self.seed)
        ids = torch.randint(0, 1000, (self.tokens,), generator=g)
        where = torch.randperm(self.tokens, generator=g)[:self.visual]
        ids[where] = torch.where(torch.rand(self.visual, generator=g) < 0.5, IMAGE_TOKEN_ID, VIDEO_TOKEN_ID)
        out = EncoderOutput(
            input_ids=ids.view(self.batch, self.seq),
            position_ids=torch.randint(0, 10_000, (3, self.batch, self.seq), generator=g),
            rope_deltas=torch.randint(-500, 500, (self.batch, 1), generator=g),
            visual_embeds=torch.randn(self.visual, self.hidden, generator=g).to(self.dtype),
            deepstack_visual_embeds=torch.randn(self.levels, self.visual, self.hidden, generator=g).to(self.dtype),
            attention_mask=torch.ones(self.batch, self.seq, dtype=torch.int64),
            image_token_id=IMAGE_TOKEN_ID,
            video_token_id=VIDEO_TOKEN_ID,
        )
        return out.token_major() if self.token_major else out


def edge_payloads(cap: int) -> list[Payload]:
    return [
        Payload("one chunk", 1, cap, cap // 3, torch.bfloat16, seed=1),
        Payload("many chunks", 2, 5 * cap + 17, 3 * cap, torch.bfloat16, seed=2),
        Payload("no visual rows", 1, cap // 2 + 3, 0, torch.float32, seed=3),
    ]


def resume_payload(cap: int) -> Payload:
    return Payload("resume", 1, 4 * cap + 5, 2 * cap, torch.bfloat16, seed=4)


def timeout_payload(cap: int) -> Payload:
    return Payload("after timeout", 1, cap + 1, cap // 2, torch.bfloat16, seed=5)


def throughput_payload(nbytes: int) -> Payload:
    per_token = (1 + THROUGHPUT_LEVELS) * THROUGHPUT_HIDDEN * 2
    n = max(1, nbytes // per_token)
    return Payload("throughput", 1, n + 8, n, torch.bfloat16, seed=6, hidden=THROUGHPUT_HIDDEN,
                   levels=THROUGHPUT_LEVELS, token_major=True)


FIELDS = ("input_ids", "position_ids", "rope_deltas", "visual_embeds", "deepstack_visual_embeds", "attention_mask")


def mismatch(got, want) -> str | None:
    """None when every field is bit-identical (dtype and shape included), else the first difference."""
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        if a is None or b is None:
            if (a is None) != (b is None):
                return f"{name}: {'missing' if a is None else 'unexpected'}"
            continue
        a = a.cpu()
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{name}: {a.dtype} {tuple(a.shape)}, expected {b.dtype} {tuple(b.shape)}"
        if not torch.equal(a, b):
            return f"{name}: {int((a != b).sum())} of {b.numel()} values differ"
    if (got.image_token_id, got.video_token_id) != (want.image_token_id, want.video_token_id):
        return "placeholder token ids differ"
    return None


def _chunks_of(p: Payload, cap: int) -> int:
    return -(-p.tokens // cap)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Copy:
    """A received chunk, copied out of the staging buffer (valid only until the iterator advances)."""

    def __init__(self, chunk):
        self.offset, self.count, self.index = chunk.token_offset, chunk.token_count, chunk.chunk_index
        self.batch, self.seq, self.mask_dtype = chunk.batch_size, chunk.seq_len, chunk.mask_dtype
        self.ids, self.pos = chunk.input_ids.cpu().clone(), chunk.position_ids.cpu().clone()
        self.mask = None if chunk.attention_mask is None else chunk.attention_mask.cpu().clone()
        self.rope = chunk.rope_deltas.cpu().clone()
        self.vis, self.deep = chunk.visual_embeds.cpu().clone(), chunk.deepstack_visual_embeds.cpu().clone()
        self.image_token_id, self.video_token_id = chunk.image_token_id, chunk.video_token_id


def _assemble(copies: list[_Copy]):
    from hf_qwen3_deepstack.encoder_output import EncoderOutput

    last = copies[-1]
    return EncoderOutput(
        input_ids=torch.cat([c.ids for c in copies]).view(last.batch, last.seq),
        position_ids=torch.cat([c.pos for c in copies], 1).view(3, last.batch, last.seq),
        rope_deltas=last.rope,
        visual_embeds=torch.cat([c.vis for c in copies]),
        deepstack_visual_embeds=torch.cat([c.deep for c in copies], 1),
        attention_mask=(None if last.mask is None else
                        torch.cat([c.mask for c in copies]).to(last.mask_dtype).view(last.batch, last.seq)),
        image_token_id=last.image_token_id,
        video_token_id=last.video_token_id,
    )


class _Steps:
    """The steps above, for one rank; each method returns this rank's figures."""

    def __init__(self, rank: int, lane: TransferLane, device: torch.device):
        from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

        self.rank, self.lane, self.device = rank, lane, device
        self.cap = lane.capacity_tokens
        self.group = dist.new_group([0, 1], backend=lane.backend)
        self.throughput_group = dist.new_group([0, 1], backend=lane.backend)
        # step boundaries: a host-only barrier, never queued behind NCCL work of the transfer
        self.sync = dist.new_group([0, 1], backend="gloo")
        if rank == 0:
            self.tx = EncoderOutputSender(1, self.group, timeout=lane.timeout_s)
        else:
            self.rx = EncoderOutputReceiver(0, self.group, capacity_tokens=self.cap, device=device,
                                            timeout=lane.timeout_s)
        self.next_id = 0

    def _request_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def deliver(self, p: Payload) -> dict:
        rid, want = self._request_id(), p.build()
        if self.rank == 0:
            self.tx.send(rid, want.to(self.device))
            return {}
        got_id, got = self.rx.recv()
        problem = mismatch(got, want) if got_id == rid else f"request id {got_id}, expected {rid}"
        return {"ok": problem is None, "problem": problem, "tokens": p.tokens, "visual_rows": p.visual,
                "bytes": want.nbytes(), "chunks": _chunks_of(p, self.cap)}

    def resume(self, p: Payload) -> dict:
        rid, want = self._request_id(), p.build()
        if self.rank == 0:
            self.tx.send(rid, want.to(self.device))
            return {}
        copies: list[_Copy] = []
        interrupted_at = None
        try:
            for chunk in self.rx.recv_chunks():
                if chunk.chunk_index == 2:
                    interrupted_at = chunk.token_offset
                    raise _ConsumerFailed
                copies.append(_Copy(chunk))
        except _ConsumerFailed:
            pass
        if interrupted_at is None:
            return {"ok": False, "problem": f"the request arrived in {len(copies)} chunk(s): no chunk 2 to interrupt"}
        copies += [_Copy(chunk) for chunk in self.rx.resume(rid)]
        offsets = [c.offset for c in copies]
        expected_offsets = list(range(0, p.tokens, self.cap))
        if offsets != expected_offsets:
            problem = f"chunk offsets {offsets}, expected {expected_offsets}"
        else:
            problem = mismatch(_assemble(copies), want)
        return {"ok": problem is None, "problem": problem, "tokens": p.tokens, "chunks": len(copies),
                "interrupted_at_token": interrupted_at}

    def timeout_then_recv(self, p: Payload) -> dict:
        from hf_qwen3_deepstack.transfer import TransferTimeout

        rid, want = self._request_id(), p.build()
        self.barrier()  # the receiver starts waiting now; the sender stays silent for SENDER_SILENCE_S
        if self.rank == 0:
            time.sleep(SENDER_SILENCE_S)
            self.tx.send(rid, want.to(self.device))
            return {}
        t0 = time.perf_counter()
        try:
            self.rx.recv(timeout=TIMEOUT_PROBE_S)
            return {"ok": False, "problem": f"recv(timeout={TIMEOUT_PROBE_S}) returned although the sender was "
                                            f"silent: no TransferTimeout"}
        except TransferTimeout:
            waited = time.perf_counter() - t0
        got_id, got = self.rx.recv()
        problem = mismatch(got, want) if got_id == rid else f"request id {got_id}, expected {rid}"
        if problem is None and waited > TIMEOUT_PROBE_S + 1.0:
            problem = f"TransferTimeout raised after {waited:.2f} s for timeout={TIMEOUT_PROBE_S} s"
        return {"ok": problem is None, "problem": problem, "timeout_after_s": waited}

    def barrier(self) -> None:
        dist.barrier(group=self.sync)

    def close_pair(self) -> dict:
        (self.tx if self.rank == 0 else self.rx).close()
        return {}

    def throughput(self, p: Payload) -> dict:
        from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

        want, reps, group = p.build(), self.lane.throughput_reps, self.throughput_group
        nbytes = want.nbytes()
        raw = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        if self.rank == 0:
            out = want.to(self.device)
            tx = EncoderOutputSender(1, group, timeout=self.lane.timeout_s)
            tx.send(0, out)  # warm-up
            self.barrier()
            handles = [tx.isend(i + 1, out) for i in range(reps)]
            for h in handles:
                h.wait()
            self.barrier()
            tx.close()
            dist.send(raw, 1, group=group)  # warm-up
            self.barrier()
            for _ in range(reps):
                dist.send(raw, 1, group=group)
            _sync(self.device)
            self.barrier()
            return {}
        rx = EncoderOutputReceiver(0, group, capacity_tokens=THROUGHPUT_CAPACITY, device=self.device,
                                   timeout=self.lane.timeout_s)
        _, got = rx.recv()
        problem = mismatch(got, want)
        self.barrier()
        t0 = time.perf_counter()
        for _ in range(reps):
            rx.recv()
        _sync(self.device)
        ours_s = time.perf_counter() - t0
        self.barrier()
        rx.close()
        dist.recv(raw, 0, group=group)
        _sync(self.device)
        self.barrier()
        t0 = time.perf_counter()
        for _ in range(reps):
            dist.recv(raw, 0, group=group)
        _sync(self.device)
        raw_s = time.perf_counter() - t0
        self.barrier()
        return {"ok": problem is None, "problem": problem, "bytes": nbytes, "reps": reps,
                "ours_gb_s": nbytes * reps / ours_s / 1e9, "raw_gb_s": nbytes * reps / raw_s / 1e9}


class _ConsumerFailed(Exception):
    """Raised by the resume step's consumer on purpose."""


def steps(lane: TransferLane) -> list[tuple[str, str, Payload | None]]:
    """(step name, _Steps method, payload) in the order both ranks run them."""
    cap = lane.capacity_tokens
    out: list[tuple[str, str, Payload | None]] = [(f"bit-exact, {p.name}", "deliver", p) for p in edge_payloads(cap)]
    out += [("resume after an interrupted transfer", "resume", resume_payload(cap)),
            ("recv after a TransferTimeout", "timeout_then_recv", timeout_payload(cap)),
            ("close", "close_pair", None),
            ("throughput vs raw send", "throughput", throughput_payload(lane.throughput_bytes))]
    return out


def rank_main(rank: int, lane: TransferLane, init_file: str, results) -> None:
    """Entry point of a spawned rank: join the 2-rank group, run the steps, put (rank, [(name, ok,
    figures or traceback, seconds)]) on `results`. Stops at the first step that raises (the pair is then out
    of step) and leaves without destructors, so a receive left posted cannot abort the teardown."""
    torch.set_num_threads(1)
    reports: list[tuple[str, bool, object, float]] = []
    try:
        kwargs = {}
        device = torch.device("cpu")
        if lane.device_type == "cuda":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
            kwargs["device_id"] = device
        dist.init_process_group(lane.backend, init_method=f"file://{init_file}", rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=2 * lane.timeout_s), **kwargs)
        dist.barrier()
        runner = _Steps(rank, lane, device)
        for name, method, payload in steps(lane):
            t0 = time.perf_counter()
            try:
                figures = getattr(runner, method)(*(() if payload is None else (payload,)))
                reports.append((name, True, figures, time.perf_counter() - t0))
            except Exception:  # noqa: BLE001 - reported to the parent, naming the step
                reports.append((name, False, traceback.format_exc(limit=4), time.perf_counter() - t0))
                break
    except Exception:  # noqa: BLE001
        reports.append(("setup", False, traceback.format_exc(limit=4), 0.0))
    finally:
        results.put((rank, reports))
        results.close()
        results.join_thread()
        os._exit(0)
