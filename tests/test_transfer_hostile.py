"""A hostile (or broken) sender in another process: headers with each field out of range, header
and rows messages shorter or longer than announced, rows that do not match their header. Each is
rejected naming the field, before anything is sized from it (the receiver's peak memory does not
grow), the sender's handle fails, and the next valid request arrives bit-exact."""

import pytest
import torch
from _dist import assert_same, random_output, run_ranks

CAP = 16
BIG = 10**12

# (case, chunk offset it applies to, what it does, field the receiver must name)
CASES = [
    ("request_id", 0, ("request_id", -7), "request_id"),
    ("token_offset", 0, ("token_offset", 5), "token_offset"),
    ("token_count", 0, ("token_count", BIG), "token_count"),
    ("total_tokens", 0, ("total_tokens", BIG), "total_tokens"),
    ("batch_size_negative", 0, ("batch_size", -3), "batch_size"),
    ("batch_size_huge", 0, ("batch_size", BIG), "batch_size"),
    ("seq_len", 0, ("seq_len", BIG), "seq_len"),
    ("num_visual_huge", 0, ("num_visual", BIG), "num_visual"),
    ("num_visual_negative", 0, ("num_visual", -1), "num_visual"),
    ("row_offset", 0, ("row_offset", 3), "row_offset"),
    ("row_count_huge", 0, ("row_count", BIG), "row_count"),
    ("row_count_negative", 0, ("row_count", -1), "row_count"),
    ("levels_huge", 0, ("num_deepstack_levels", 10**6), "num_deepstack_levels"),
    ("levels_negative", 0, ("num_deepstack_levels", -2), "num_deepstack_levels"),
    ("hidden_huge", 0, ("hidden_size", BIG), "hidden_size"),
    ("hidden_negative", 0, ("hidden_size", -4), "hidden_size"),
    ("embed_dtype_unknown", 0, ("embed_dtype", 99), "embed_dtype"),
    ("embed_dtype_int", 0, ("embed_dtype", 5), "embed_dtype"),
    ("mask_dtype", 0, ("mask_dtype", 77), "mask_dtype"),
    ("image_token_id", 0, ("image_token_id", -9), "image_token_id"),
    ("flags", 0, ("flags", 1 << 20), "flags"),
    ("int_bytes", 0, ("int_bytes", BIG), "int_bytes"),
    ("embed_bytes", 0, ("embed_bytes", BIG), "embed_bytes"),
    ("capacity", 0, ("capacity", BIG), "capacity"),
    ("rows_tail", 0, ("rows_tail", 300), "rows_tail"),
    ("kind", 0, ("kind", 42), "kind"),
    ("second_chunk_hidden", CAP, ("hidden_size", 17), "hidden_size"),
    ("second_chunk_row_count", CAP, ("row_count", BIG), "row_count"),
    # rows announced that are not there: one more row than the chunk's placeholders
    ("rows_not_matching_ids", 0, "one_more_row", "row_count"),
    ("rows_never_sent", 0, "more_visual", "row_count"),  # num_visual one more than the placeholders
    ("header_short", 0, "header_short", "int_bytes"),
    ("header_cut", 0, "header_cut", "checksum"),
    ("header_long", 0, "header_long", "int_bytes"),
    ("rows_short_by_a_byte", 0, "rows_short", "embed_bytes"),
    ("rows_short_by_a_row", 0, "rows_short_row", "embed_bytes"),
    ("rows_long", 0, "rows_long", "embed_bytes"),
    ("last_rows_short", 2 * CAP, "rows_short", "embed_bytes"),
    ("last_rows_long", 2 * CAP, "rows_long", "embed_bytes"),
]


def _hostile(i: int):
    return random_output(500 + i, 2, 20, 18, hidden=16, levels=3)  # 40 tokens: chunks at 0, 16, 32


def _valid(i: int):
    return random_output(900 + i, 1, 30, 12, hidden=16, levels=3, dtype=torch.bfloat16)


def _patch_sender(cases: dict[int, tuple]):
    """Make the sender misbehave on the chunks named by `cases` {request id: (offset, what)}."""
    from hf_qwen3_deepstack.transfer.chunking import SendPlan

    header, header_message, rows_message = SendPlan.header, SendPlan.header_message, SendPlan.rows_message

    def hit(h, kind):
        offset, what = cases.get(h.request_id, (None, None))
        if isinstance(what, str) and what == kind:
            return h.token_offset == offset
        return kind == "field" and isinstance(what, tuple) and h.token_offset == offset

    def bad_header(self, request_id, offset, capacity):
        h = header(self, request_id, offset, capacity)
        if hit(h, "field"):
            setattr(h, *cases[request_id][1])
        elif hit(h, "one_more_row"):
            h.row_count += 1
            h.embed_bytes += 4 * 16 * 4
        elif cases.get(request_id, (0, None))[1] == "more_visual":
            h.num_visual += 1
        return h

    def bad_header_message(self, h, max_bytes):
        msg = header_message(self, h, max_bytes)
        if hit(h, "header_short"):
            return msg[:-8]
        if hit(h, "header_cut"):
            return msg[:100]
        if hit(h, "header_long"):
            return torch.cat([msg, torch.full((16,), 7, dtype=torch.uint8)])
        return msg

    def bad_rows_message(self, h):
        rows = rows_message(self, h)
        flat = None if rows is None else rows.reshape(-1).view(torch.uint8)
        if hit(h, "rows_short"):
            return flat[:-1]
        if hit(h, "rows_short_row"):
            return rows[:-1]
        if hit(h, "rows_long"):
            return torch.cat([flat, flat[: rows[0].numel() * rows.element_size()]])
        return rows

    SendPlan.header, SendPlan.header_message, SendPlan.rows_message = bad_header, bad_header_message, bad_rows_message


def _peak_kib() -> tuple[int, int]:
    """(VmPeak, VmHWM) of this process: peak virtual size and peak resident size."""
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    return int(status["VmPeak"].split()[0]), int(status["VmHWM"].split()[0])


def _ranks(rank: int):
    from hf_qwen3_deepstack.transfer import EncoderOutputReceiver, EncoderOutputSender, HeaderMismatch, TransferError

    if rank == 0:
        _patch_sender({2 * i + 2: (offset, what) for i, (_, offset, what, _) in enumerate(CASES)})
        tx = EncoderOutputSender(1, timeout=30)
        tx.send(0, _valid(0))
        failed = []
        for i in range(len(CASES)):
            try:
                tx.send(2 * i + 2, _hostile(i))
                failed.append(None)
            except TransferError as e:
                failed.append(type(e).__name__)
            tx.send(2 * i + 3, _valid(i + 1))
        tx.close()
        return failed
    rx = EncoderOutputReceiver(0, capacity_tokens=CAP, timeout=30)  # learns H and K from the first request
    rid, got = rx.recv()
    assert rid == 0
    assert_same(got, _valid(0))
    before = _peak_kib()
    errors = []
    for i, (name, *_rest) in enumerate(CASES):
        try:
            rx.recv()
            errors.append((name, None, None))
        except HeaderMismatch as e:
            errors.append((name, e.field, str(e)))
        rid, got = rx.recv()  # the next valid request, delivered exactly
        assert rid == 2 * i + 3, (name, rid)
        assert_same(got, _valid(i + 1), name)
    after = _peak_kib()
    rx.close()
    return errors, [a - b for a, b in zip(after, before)]


def test_hostile_headers_and_lengths_are_rejected_naming_the_field_and_the_channel_goes_on():
    failed, (errors, (peak_growth, rss_growth)) = run_ranks(_ranks, timeout=240)
    for (name, offset, what, field), (_, got_field, msg) in zip(CASES, errors):
        assert got_field == field, (name, got_field, msg)
        assert f"'{field}'" in msg and "allowed" in msg, (name, msg)
        if name != "request_id" and field != "checksum":
            assert f"request {2 * CASES.index((name, offset, what, field)) + 2}" in msg, (name, msg)
        if isinstance(what, tuple):  # names the value too
            assert str(what[1]) in msg, (name, msg)
    assert all(f is not None for f in failed), failed  # every hostile request's handle failed
    # nothing was sized from a hostile value (they ask for terabytes): the peaks barely moved
    assert peak_growth < 64 * 1024 and rss_growth < 64 * 1024, (peak_growth, rss_growth)
