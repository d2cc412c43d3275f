"""Soak: several hundred random payloads, B 1-5, S 1-2000, N 0 to all tokens, K 0-4, H 1-4096,
fp32/bf16/fp16, capacity from 1 token to more than the request, through `recv()` and
`recv_chunks()`: every one bit-exact. A receiver learns H and K from its first request, so each
group of payloads shares one (capacity, H, K) on a fresh sender/receiver pair."""

import math
import random

import torch
from _dist import IMAGE_ID, VIDEO_ID, assert_same, random_output, run_ranks

GROUPS, PER_GROUP = 75, 4  # 300 payloads
ROWS_BUDGET = 6 << 20  # bytes of rows per payload at most, to keep the run short


def _group(g: int):
    rng = random.Random(g)
    k = rng.randint(0, 4)
    h = rng.choice([1, 2, 3, 7, 16, 64, 100, 256, 1000, 2048, 4096]) if g % 3 else rng.randint(1, 4096)
    payloads = []
    for i in range(PER_GROUP):
        b = rng.randint(1, 5)
        s = rng.choice([1, 2, rng.randint(1, 50)] + [rng.randint(1, 2000)] * (g % 15 != 0))
        dtype = rng.choice([torch.float32, torch.bfloat16, torch.float16])
        row_bytes = (1 + k) * h * dtype.itemsize
        most = min(b * s, ROWS_BUDGET // row_bytes)
        n = rng.choice([0, most, rng.randint(0, most)])
        mask = rng.choice([torch.int64, torch.bool, None])
        ids = rng.choice([(IMAGE_ID, VIDEO_ID), (IMAGE_ID, None), (None, VIDEO_ID)])
        payloads.append(dict(seed=1000 * g + i, batch=b, seq=s, n_visual=n, hidden=h, levels=k, dtype=dtype,
                             mask_dtype=mask, token_ids=ids))
    tokens = max(p["batch"] * p["seq"] for p in payloads)
    lo, hi = (1, 2 * tokens) if tokens <= 64 else (tokens // 48, 2 * tokens)  # at most ~50 chunks a payload
    cap = 1 if g % 15 == 0 else round(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return cap, rng.random() < 0.3, payloads


def _make(p: dict):
    p = dict(p)
    return random_output(p.pop("seed"), p.pop("batch"), p.pop("seq"), p.pop("n_visual"), **p)


def _soak(rank: int):
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender

    delivered = 0
    for g in range(GROUPS):
        cap, streaming, payloads = _group(g)
        if rank == 0:
            tx = EncoderOutputSender(1, timeout=60)
            handles = [tx.isend(i, _make(p)) for i, p in enumerate(payloads)]
            for h in handles:
                h.wait()
            tx.close()
            continue
        rx = EncoderOutputReceiver(0, capacity_tokens=cap, timeout=60)
        for i, p in enumerate(payloads):
            want = _make(p)
            where = f"group {g} payload {i} (cap {cap}, {p})"
            if streaming:
                rid, got = _assemble(rx)
            else:
                rid, got = rx.recv()
            assert rid == i, where
            assert_same(got, want, where)
            delivered += 1
        rx.close()
    return delivered


def _assemble(rx):
    from hf_qwen3_deepstack.encoder_output import EncoderOutput

    ids, pos, mask, rows = [], [], [], []
    for c in rx.recv_chunks():
        assert c.token_count <= rx.capacity_tokens
        ids.append(c.input_ids.clone())
        pos.append(c.position_ids.clone())
        if c.attention_mask is not None:
            mask.append(c.attention_mask.to(c.mask_dtype).clone())
        rows.append(torch.cat([c.visual_embeds[:, None], c.deepstack_visual_embeds.transpose(0, 1)], 1))
        last = c
    b, s = last.batch_size, last.seq_len
    rows = torch.cat(rows)
    return last.request_id, EncoderOutput(
        input_ids=torch.cat(ids).view(b, s), position_ids=torch.cat(pos, 1).view(3, b, s),
        rope_deltas=last.rope_deltas.clone(), visual_embeds=rows[:, 0],
        deepstack_visual_embeds=rows[:, 1:].transpose(0, 1), attention_mask=torch.cat(mask).view(b, s) if mask else None,
        image_token_id=last.image_token_id, video_token_id=last.video_token_id)


def test_hundreds_of_random_payloads_arrive_bit_exact():
    _, delivered = run_ranks(_soak, timeout=600)
    assert delivered == GROUPS * PER_GROUP
