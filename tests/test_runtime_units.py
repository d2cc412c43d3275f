"""Fast unit tests of the runtime's pieces (no processes)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from hf_qwen3_deepstack.runtime import messages
from hf_qwen3_deepstack.runtime.dispatch import DispatchLimits, Dispatcher
from hf_qwen3_deepstack.runtime.options import RuntimeOptions, add_runtime_arguments
from hf_qwen3_deepstack.runtime.requests import check_local_files, load_requests
from hf_qwen3_deepstack.runtime.results import ResultWriter, format_summary, percentile
from hf_qwen3_deepstack.runtime.roles import Roles


def test_requests_parsing(tmp_path):
    good = {"id": "a", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_new_tokens": 3}
    lines = [json.dumps(good), "", "{broken", json.dumps({"id": 7, "messages": "nope"}),
             json.dumps({**good, "max_new_tokens": 0}), json.dumps(good), '"just a string"',
             '{"id": "cut", "messages": [', json.dumps({**good, "id": "t", "temperature": 0.7, "seed": 5}),
             json.dumps({**good, "id": "typo", "max_tokens": 5})]
    f = tmp_path / "r.jsonl"
    f.write_text("\n".join(lines))
    reqs = load_requests(f, default_max_new_tokens=9)
    assert [r.index for r in reqs] == list(range(9))
    assert reqs[0].error is None and reqs[0].params.max_new_tokens == 3 and reqs[0].id == "a"
    assert reqs[1].id == "line-3" and "malformed JSON" in reqs[1].error
    assert reqs[2].id == "7" and "messages" in reqs[2].error
    assert "max_new_tokens" in reqs[3].error and "duplicate" in reqs[3].error and reqs[3].id == "a#line5"
    assert "duplicate" in reqs[4].error and reqs[4].id != "a"
    assert reqs[5].id == "line-7" and "not a JSON object" in reqs[5].error
    assert reqs[6].id == "cut" and "malformed" in reqs[6].error  # id recovered from a broken line
    assert reqs[7].params.temperature == 0.7 and reqs[7].params.seed == 5 and reqs[7].params.max_new_tokens == 3
    assert "max_tokens" in reqs[8].error  # an unknown field is named, not ignored
    assert len({r.id for r in reqs}) == len(reqs)


def test_request_lines_split_on_newlines_only_and_reject_bad_utf8_and_unknown_roles(tmp_path):
    text = "x\u2028y\u2029z\u0085w"  # raw in the file: str.splitlines() would cut the line at each
    rows = [json.dumps({"id": "raw", "messages": [{"role": "user", "content": text}]}, ensure_ascii=False),
            json.dumps({"id": "crlf", "messages": [{"role": "user", "content": "hi"}]}),
            json.dumps({"id": "robot", "messages": [{"role": "robot", "content": "hi"}]})]
    data = b"\xef\xbb\xbf" + rows[0].encode() + b"\n" + rows[1].encode() + b"\r\n" + rows[2].encode() + b"\n"
    data += b'{"id": "latin1", "messages": [{"role": "user", "content": "caf\xe9"}]}\n'
    f = tmp_path / "r.jsonl"
    f.write_bytes(data)
    reqs = load_requests(f, default_max_new_tokens=4)
    assert [r.id for r in reqs] == ["raw", "crlf", "robot", "latin1"]
    assert reqs[0].error is None and reqs[0].messages[0]["content"] == text  # BOM skipped, line whole
    assert reqs[1].error is None
    assert "unknown role 'robot'" in reqs[2].error
    assert "not valid UTF-8" in reqs[3].error and "line 4" in reqs[3].error


def test_check_local_files(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    ok = [{"role": "user", "content": [{"type": "image", "image": str(img)},
                                       {"type": "video", "video": [str(img), str(img)]}]}]
    check_local_files(ok)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        check_local_files([{"role": "user", "content": [{"type": "video", "video": [str(img), "gone.png"]}]}])


def test_dispatch_message_header_is_checked_before_allocating(monkeypatch):
    def fake_recv(tensor, src=None, group=None, tag=0):
        tensor.copy_(torch.tensor([messages.MAGIC, 1 << 40]))  # a terabyte announced
        return 3

    monkeypatch.setattr(messages.dist, "recv", fake_recv)
    with pytest.raises(RuntimeError, match="rank 3.*1099511627776 bytes"):
        messages.recv_any(group=None)


def test_roles():
    r = Roles(rank=3, world_size=5, num_encoders=2, num_lms=3)
    assert r.is_lm and not r.is_lm_leader and r.lm_leader == 2 and r.lm_ranks == [2, 3, 4]
    assert r.describe(1) == "encoder 1" and r.describe(4) == "language 2"
    with pytest.raises(ValueError, match="E \\+ L"):
        Roles(0, 4, 2, 1)


def _request(index, new_tokens):
    from hf_qwen3_deepstack.runtime.requests import parse_request

    return parse_request({"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": new_tokens},
                         index, f"r{index}", 4)


def test_dispatch_sends_work_to_the_replica_with_the_most_free_capacity():
    sent, written = [], []
    d = Dispatcher([0, 1], [2, 3], DispatchLimits(encoder_slots=2, lm_slots=4),
                   lambda msg, dst: sent.append((msg["kind"], msg["index"], dst)), lambda req, line: written.append(line))
    for i, n in enumerate([40, 2, 2, 2, 2, 2, 2]):
        d.submit(_request(i, n))
    d.dispatch()
    assigned = [(i, dst) for kind, i, dst in sent if kind == "assign"]
    expected_lm = {i: dst for kind, i, dst in sent if kind == "expect"}
    assert [i for i, _ in assigned] == [0, 1, 2, 3]  # 2 encoders x 2 slots
    assert {dst for _, dst in assigned} == {0, 1}
    assert expected_lm[0] == 2 and expected_lm[1] == expected_lm[2] == expected_lm[3] == 3  # the long one has 2 alone
    d.on_encoded(0, [{"index": 0, "encode_s": 0.1, "sent_at": 0.0}])  # encoder 0 frees a slot
    d.dispatch()
    assert ("assign", 4, 0) in sent and ("expect", 4, 3) in sent
    d.on_failed(1, 1, "image file not found: x.png")  # an error result, and the replica forgets it
    assert written == [{"id": "r1", "error": "image file not found: x.png", "status": 400}] and ("drop", 1, 3) in sent
    with pytest.raises(RuntimeError, match="not assigned"):
        d.on_encoded(1, [{"index": 0, "encode_s": 0.1, "sent_at": 0.0}])
    assert d.queue_depth == 2 and d.in_flight == 4


def test_serial_dispatch_holds_one_request_in_the_system():
    sent = []
    d = Dispatcher([0], [1, 2], DispatchLimits(encoder_slots=8, lm_slots=8, serial=True),
                   lambda msg, dst: sent.append((msg["kind"], msg["index"], dst)), lambda req, line: None)
    for i in range(3):
        d.submit(_request(i, 3))
    d.dispatch()
    assert [x for x in sent if x[0] == "assign"] == [("assign", 0, 0)]
    d.on_encoded(0, [{"index": 0, "encode_s": 0.1, "sent_at": 0.0}])
    d.dispatch()
    assert len([x for x in sent if x[0] == "assign"]) == 1  # still generating
    d.on_result(1, {"index": 0, "error": "x"})
    d.dispatch()
    assert [x for x in sent if x[0] == "expect"] == [("expect", 0, 1), ("expect", 1, 2)]  # and spread over both


def test_serial_gap_tells_the_idle_leader_when_the_next_request_may_go(monkeypatch):
    import hf_qwen3_deepstack.runtime.dispatch as dispatch

    now = [100.0]
    monkeypatch.setattr(dispatch.time, "perf_counter", lambda: now[0])
    sent = []
    d = Dispatcher([0], [1], DispatchLimits(encoder_slots=8, lm_slots=8, serial=True, serial_gap_s=0.25),
                   lambda msg, dst: sent.append((msg["kind"], msg["index"])), lambda req, line: None)
    assert d.next_dispatch_in() == float("inf")  # nothing queued: only an event can wake the leader
    for i in range(2):
        d.submit(_request(i, 3))
    d.dispatch()
    assert d.next_dispatch_in() == float("inf")  # request 0 in the system: its result wakes the leader
    now[0] = 100.5
    d.on_encoded(0, [{"index": 0, "encode_s": 0.1, "sent_at": 0.0}])
    d.on_result(1, {"index": 0, "error": "x"})
    assert d.next_dispatch_in() == 0.0  # the gap since request 0 went out has passed
    d.dispatch()
    assert ("assign", 1) in sent
    d.submit(_request(2, 3))
    d.on_encoded(0, [{"index": 1, "encode_s": 0.1, "sent_at": 0.0}])
    d.on_result(1, {"index": 1, "error": "x"})
    now[0] = 100.6
    assert d.next_dispatch_in() == pytest.approx(0.15)  # 0.25 s after request 1 went out at 100.5
    d.dispatch()
    assert ("assign", 2) not in sent
    now[0] = 100.75
    d.dispatch()
    assert ("assign", 2) in sent


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_every_encoder_language_pair_gets_a_data_group_of_its_own_on_nccl(monkeypatch, backend):
    """With CUDA each pair's payloads go over a 2-rank cpu:gloo,cuda:nccl group (one NCCL stream
    per pair: eager-initialized torch runs a group's point-to-point operations on one stream); on
    CPU one gloo group carries every pair."""
    from hf_qwen3_deepstack.runtime import roles as roles_module

    made = []

    def new_group(ranks, backend, timeout=None):
        made.append((tuple(ranks), backend))
        return len(made) - 1

    monkeypatch.setattr(roles_module.dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(roles_module.dist, "new_group", new_group)
    groups = roles_module.make_groups(Roles(0, 5, 2, 3))
    data = {made[g] for g in {groups.data_for(e, lm) for e in (0, 1) for lm in (2, 3, 4)}}
    if backend == "gloo":
        assert data == {((0, 1, 2, 3, 4), "gloo")}
    else:
        assert data == {((e, lm), "cpu:gloo,cuda:nccl") for e in (0, 1) for lm in (2, 3, 4)}
        assert made[groups.data_for(1, 3)] == ((1, 3), "cpu:gloo,cuda:nccl")


def test_percentile_matches_torch():
    vals = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4]
    t = torch.tensor(vals, dtype=torch.float64)
    for q in (50, 95):
        assert percentile(vals, q) == pytest.approx(torch.quantile(t, q / 100).item())


def test_writer_summary(tmp_path):
    out = tmp_path / "o.jsonl"
    w = ResultWriter(str(out), total=3, progress=False)
    for i in range(2):
        w.write({"id": f"r{i}", "text": "hi", "token_ids": [1, 2, 3], "finish_reason": "length", "prompt_tokens": 10,
                 "visual_tokens": 4, "timings": {"encode_s": 0.1, "transfer_s": 0.01, "prefill_s": 0.02,
                                                 "decode_s": 0.3 + i},
                 "queue_s": 0.0, "ttft_s": 0.2 + i, "latency_s": 0.5 + i, "encoder_rank": 0, "lm_rank": 1})
    w.write({"id": "bad", "error": "nope"})
    w.write({"id": "bad", "error": "again"})  # never twice
    w.close()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["r0", "r1", "bad"]
    s = w.summary({1: {"steps": 10, "mean_batch": 1.5, "handled": 2, "busy_s": 1.0, "joined_running": 1},
                   0: {"encoded": 3, "vision_batches": 2}})
    assert (s["requests"], s["ok"], s["errors"], s["generated_tokens"]) == (3, 2, 1, 6)
    assert s["timings"]["decode_s"]["p50"] == pytest.approx(0.8)
    assert s["timings"]["ttft_s"]["p50"] == pytest.approx(0.7) and s["mean_batch_size"] == 1.5
    text = format_summary(s)
    assert "tokens/s" in text and "p95" in text and "ttft_s" in text and "mean batch 1.50" in text


def test_options_argv_roundtrip():
    p = argparse.ArgumentParser()
    add_runtime_arguments(p)
    args = p.parse_args(["--requests", "r.jsonl", "--encoders", "2", "--lms", "3", "--dtype", "bfloat16",
                         "--capacity-tokens", "100", "--print-results", "--quiet", "--max-batch-size", "4"])
    opts = RuntimeOptions.from_args(args)
    assert RuntimeOptions.from_args(p.parse_args(opts.argv())) == opts
    assert opts.max_batch_size == 4 and opts.print_results and not opts.serial


def test_every_runtime_option_has_help_showing_its_default():
    p = argparse.ArgumentParser()
    add_runtime_arguments(p)
    for action in p._actions[1:]:
        assert action.help, action.dest
        if action.default not in (None, False):
            assert "%(default)s" in action.help, action.dest


def test_a_result_that_overtakes_the_encoders_report_is_written_once_the_report_arrives():
    written = []
    d = Dispatcher([0], [1], DispatchLimits(encoder_slots=2, lm_slots=2), lambda msg, dst: None,
                   lambda req, line: written.append(line))
    d.submit(_request(0, 3), arrival=100.0)
    d.dispatch()
    d.on_result(1, {"index": 0, "text": "x", "token_ids": [1], "timings": {"prefill_s": 0.1, "decode_s": 0.0},
                    "received_at": 100.5, "admitted_at": 100.6, "first_token_at": 100.7, "done_at": 100.8})
    assert written == []  # its encode time is not known yet
    d.on_encoded(0, [{"index": 0, "encode_s": 0.25, "sent_at": 100.3}])
    (line,) = written
    assert line["timings"]["encode_s"] == 0.25 and line["timings"]["transfer_s"] == pytest.approx(0.2)
    assert line["ttft_s"] == pytest.approx(0.7) and line["queue_s"] == pytest.approx(0.15)
    assert d.in_flight == 0
