"""Fast unit tests of the runtime's pieces (no processes)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from hf_qwen3_deepstack.runtime import control
from hf_qwen3_deepstack.runtime.options import add_runtime_arguments, forward_argv
from hf_qwen3_deepstack.runtime.requests import check_local_files, load_requests
from hf_qwen3_deepstack.runtime.results import ResultWriter, error_result, format_summary, ok_result, percentile
from hf_qwen3_deepstack.runtime.roles import Roles


def test_requests_parsing(tmp_path):
    good = {"id": "a", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_new_tokens": 3}
    lines = [json.dumps(good), "", "{broken", json.dumps({"id": 7, "messages": "nope"}),
             json.dumps({**good, "max_new_tokens": 0}), json.dumps(good), '"just a string"',
             '{"id": "cut", "messages": [']
    f = tmp_path / "r.jsonl"
    f.write_text("\n".join(lines))
    reqs = load_requests(f)
    assert [r.index for r in reqs] == list(range(7))
    assert reqs[0].error is None and reqs[0].max_new_tokens == 3 and reqs[0].id == "a"
    assert reqs[1].id == "line-3" and "malformed JSON" in reqs[1].error
    assert reqs[2].id == "7" and "messages" in reqs[2].error
    assert "max_new_tokens" in reqs[3].error and "duplicate" in reqs[3].error and reqs[3].id == "a#line5"
    assert "duplicate" in reqs[4].error and reqs[4].id != "a"
    assert reqs[5].id == "line-7" and "not a JSON object" in reqs[5].error
    assert reqs[6].id == "cut" and "malformed" in reqs[6].error  # id recovered from a broken line
    assert len({r.id for r in reqs}) == len(reqs)


def test_check_local_files(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    ok = [{"role": "user", "content": [{"type": "image", "image": str(img)},
                                       {"type": "video", "video": [str(img), str(img)]}]}]
    check_local_files(ok)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        check_local_files([{"role": "user", "content": [{"type": "video", "video": [str(img), "gone.png"]}]}])


def test_control_roundtrip():
    msg = control.Control(control.ERROR, 12345, 0.25, 3, "image file not found: /tmp/é.png" + "x" * 5000)
    back = control.unpack(control.pack(msg))
    assert (back.kind, back.index, back.sender) == (control.ERROR, 12345, 3)
    assert abs(back.encode_s - 0.25) < 1e-9
    assert back.error.startswith("image file not found: /tmp/é.png") and len(back.error) <= 8 * control.ERROR_TEXT_WORDS
    ok = control.unpack(control.pack(control.Control(control.PAYLOAD, 0, 1.5, 0)))
    assert ok.kind == control.PAYLOAD and ok.error is None
    bad = control.pack(msg)
    bad[0] = 1
    with pytest.raises(RuntimeError, match="corrupt"):
        control.unpack(bad)


def test_roles_and_schedule():
    r = Roles(rank=3, world_size=5, num_encoders=2, num_lms=3)
    assert r.is_lm and not r.is_lm_leader and r.lm_leader == 2 and r.lm_ranks == [2, 3, 4]
    n = 11
    enc = [Roles(e, 5, 2, 3).my_requests(n) for e in range(2)]
    lms = [Roles(l, 5, 2, 3).my_requests(n) for l in range(2, 5)]
    assert sorted(sum(enc, [])) == list(range(n)) and sorted(sum(lms, [])) == list(range(n))
    with pytest.raises(ValueError, match="E \\+ L"):
        Roles(0, 4, 2, 1)


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_every_encoder_language_pair_gets_a_data_group_of_its_own_on_nccl(monkeypatch, backend):
    """With CUDA each pair's payloads go over a 2-rank cpu:gloo,cuda:nccl group (one NCCL stream
    per pair: eager-initialized torch runs a group's point-to-point operations on one stream); on
    CPU one gloo group carries every pair."""
    from hf_qwen3_deepstack.runtime import roles as roles_module

    made = []

    def new_group(ranks, backend):
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
        w.write(ok_result(f"r{i}", "hi", [1, 2, 3], 10, 4, {"encode_s": 0.1, "transfer_s": 0.01,
                                                             "prefill_s": 0.02, "decode_s": 0.3 + i}, 0, 1))
    w.write(error_result("bad", "nope"))
    w.write(error_result("bad", "again"))  # never twice
    w.close()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["r0", "r1", "bad"]
    s = w.summary()
    assert (s["requests"], s["ok"], s["errors"], s["generated_tokens"]) == (3, 2, 1, 6)
    assert s["timings"]["decode_s"]["p50"] == pytest.approx(0.8)
    text = format_summary(s)
    assert "tokens/s" in text and "p95" in text and "decode_s" in text


def test_forward_argv_roundtrip():
    p = argparse.ArgumentParser()
    add_runtime_arguments(p)
    args = p.parse_args(["--requests", "r.jsonl", "--encoders", "2", "--lms", "3", "--dtype", "bfloat16",
                         "--capacity-tokens", "100", "--print-results", "--quiet"])
    again = p.parse_args(forward_argv(args))
    assert vars(again) == vars(args)
