"""`hf-qwen3-deepstack selfcheck --device cpu`: every check passes on this install (runtime and server
included) and its JSON report carries the figures; a perturbed weight in the split copy makes parity fail, named, with its figure;
bad usage and a missing CUDA device are reported as such."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_qwen3_deepstack.cli import main as cli_main
from hf_qwen3_deepstack.selfcheck.options import FAULT_ENV

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ("image", "video", "text-only")


def run_selfcheck(tmp_path: Path, *args: str, fault: str | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_QWEN3_DEEPSTACK_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "hf_qwen3_deepstack.cli", "selfcheck", "--json", str(report), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400, check=False)
    return proc, (json.loads(report.read_text()) if report.exists() else {})


def rows(report: dict, group: str) -> dict[str, dict]:
    return {r["name"]: r for r in report["checks"] if r["group"] == group}


def test_selfcheck_on_cpu_passes_every_check_and_reports_its_figures(tmp_path):
    import transformers

    proc, report = run_selfcheck(tmp_path, "--device", "cpu", "--workdir", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert report["ok"] is True and report["failures"] == [] and report["resolved_device"] == "cpu"
    assert report["elapsed_s"] < 300
    assert report["environment"]["torch"] == torch.__version__
    assert report["environment"]["transformers"] == transformers.__version__
    assert rows(report, "environment")["transformers"]["status"] == "pass"

    parity = rows(report, "parity")
    assert sorted(parity) == sorted(f"fp32 cpu: {p}" for p in PROMPTS)
    for name, row in parity.items():
        assert row["status"] == "pass", row
        assert row["values"]["max_abs_logit_diff"] <= 1e-5 and row["values"]["tokens_equal"] is True
        assert row["values"]["actual_tokens"] == row["values"]["expected_tokens"] != []
    # the prompts exercise what they claim to
    assert parity["fp32 cpu: image"]["values"]["visual_tokens"] > 0
    assert parity["fp32 cpu: video"]["values"]["visual_tokens"] > 0
    assert parity["fp32 cpu: text-only"]["values"]["visual_tokens"] == 0

    transfer = rows(report, "transfer")
    assert sorted(transfer) == sorted(f"gloo cpu: {s}" for s in (
        "bit-exact, one chunk", "bit-exact, many chunks", "bit-exact, no visual rows",
        "resume after an interrupted transfer", "recv after a TransferTimeout", "throughput vs raw send"))
    for name, row in transfer.items():
        assert row["values"]["ok"] is True, row  # delivered bit-exact (the throughput step checks it too)
        if "throughput" not in name:
            assert row["status"] == "pass", row
    assert transfer["gloo cpu: bit-exact, one chunk"]["values"]["chunks"] == 1
    assert transfer["gloo cpu: bit-exact, many chunks"]["values"]["chunks"] > 2
    assert transfer["gloo cpu: bit-exact, no visual rows"]["values"]["visual_rows"] == 0
    assert transfer["gloo cpu: resume after an interrupted transfer"]["values"]["interrupted_at_token"] > 0
    throughput = transfer["gloo cpu: throughput vs raw send"]
    assert throughput["status"] in ("pass", "warn")  # a slow transfer is flagged, not failed (noisy host)
    assert throughput["values"]["ours_gb_s"] > 0 and throughput["values"]["raw_gb_s"] > 0

    runtime = rows(report, "runtime")
    assert list(runtime) == ["1E+1L cpu, fp32"]
    assert runtime["1E+1L cpu, fp32"]["status"] == "pass" and runtime["1E+1L cpu, fp32"]["values"]["tokens_equal"]
    server = rows(report, "server")  # the test extra installs the serve extra
    assert list(server) == ["one streamed request, 1E+1L cpu, fp32"]
    streamed = server["one streamed request, 1E+1L cpu, fp32"]
    assert streamed["status"] == "pass" and streamed["values"]["tokens_equal"] is True
    assert streamed["values"]["token_ids"] == parity["fp32 cpu: image"]["values"]["expected_tokens"]
    assert "0 fail" in proc.stdout and "FAILED" not in proc.stdout

    # the oracle is transformers itself: regenerate the image prompt's tokens from the checkpoint the check built
    from hf_qwen3_deepstack.runtime.models import build_prompt, load_monolithic
    from hf_qwen3_deepstack.selfcheck.inputs import NEW_TOKENS, prompt_messages

    processor, model = load_monolithic(str(tmp_path / "work" / "tiny-moe"), torch.float32, torch.device("cpu"))
    messages = prompt_messages(sorted((tmp_path / "work" / "images").iterdir(), key=_sample_order))
    inputs = build_prompt(processor, messages["image"])
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert parity["fp32 cpu: image"]["values"]["expected_tokens"] == out[0, inputs["input_ids"].shape[1]:].tolist()


def test_selfcheck_of_the_dense_family_checks_a_dense_checkpoint_against_qwen3vl(tmp_path):
    proc, report = run_selfcheck(tmp_path, "--device", "cpu", "--family", "dense", "--checks", "parity,runtime",
                                 "--workdir", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert report["family"] == "dense" and report["ok"] is True
    parity = rows(report, "parity")
    assert sorted(parity) == sorted(f"fp32 cpu: {p}" for p in PROMPTS)
    assert all(r["status"] == "pass" and r["values"]["tokens_equal"] for r in parity.values())
    assert rows(report, "runtime")["1E+1L cpu, fp32"]["values"]["tokens_equal"] is True
    config = json.loads((tmp_path / "work" / "tiny-dense" / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl"  # the oracle was Qwen3VLForConditionalGeneration


def _sample_order(path: Path):
    from hf_qwen3_deepstack.tiny_checkpoint.build import NUM_SAMPLE_FRAMES, SAMPLE_IMAGES

    names = [n for n, _, _ in SAMPLE_IMAGES] + [f"frame_{i}.png" for i in range(NUM_SAMPLE_FRAMES)]
    return names.index(path.name)


def test_perturbed_split_weight_fails_parity_naming_each_prompt_and_its_logit_difference(tmp_path):
    proc, report = run_selfcheck(tmp_path, "--device", "cpu", "--checks", "parity", fault="split-weight")
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert report["ok"] is False
    parity = rows(report, "parity")
    assert sorted(parity) == sorted(f"fp32 cpu: {p}" for p in PROMPTS)
    for name, row in parity.items():
        assert row["status"] == "fail"
        diff = row["values"]["max_abs_logit_diff"]
        assert diff > 1e-5
        failure = f"parity / {name}: max |Δlogit| {diff:.1e} > 1e-05"
        assert any(f.startswith(failure) for f in report["failures"]), report["failures"]
        assert f"FAILED {failure}" in proc.stdout
    assert all(r["status"] != "fail" for r in rows(report, "environment").values())
    assert not rows(report, "transfer") and not rows(report, "runtime")  # --checks parity ran parity only


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without CUDA")
def test_device_cuda_without_cuda_fails_naming_the_missing_device(tmp_path, capsys):
    report_file = tmp_path / "report.json"
    assert cli_main(["selfcheck", "--device", "cuda", "--checks", "parity", "--json", str(report_file)]) == 1
    report = json.loads(report_file.read_text())
    device = rows(report, "environment")["device"]
    assert device["status"] == "fail" and "torch.cuda.is_available() is False" in device["figure"]
    assert rows(report, "parity") == {"all": rows(report, "parity")["all"]}
    assert rows(report, "parity")["all"]["status"] == "skip"
    assert "FAILED environment / device" in capsys.readouterr().out


@pytest.mark.parametrize("argv,env,expected", [
    (["--checks", "parity,bogus"], None,
     "unknown group(s) 'bogus'; expected a comma-separated subset of environment,parity,transfer,runtime,server"),
    ([], "flip-everything", f"{FAULT_ENV}='flip-everything' is not a known fault; expected one of split-weight"),
], ids=["unknown_check_group", "unknown_fault"])
def test_bad_usage_exits_2_naming_what_is_wrong(monkeypatch, capsys, argv, env, expected):
    monkeypatch.delenv(FAULT_ENV, raising=False)
    if env:
        monkeypatch.setenv(FAULT_ENV, env)
    assert cli_main(["selfcheck", "--device", "cpu", *argv]) == 2
    assert expected in capsys.readouterr().err


def test_transformers_outside_the_supported_range_is_a_warning_naming_the_range():
    from hf_qwen3_deepstack.selfcheck import environment

    env = {**environment.describe(), "transformers": "5.30.0"}
    row = {r.name: r for r in environment.run(env, "cpu", torch.device("cpu"))}["transformers"]
    assert row.status.value == "warn"
    assert "5.30.0" in row.figure and "OUTSIDE the supported range >=5.23,<5.24" in row.figure
    assert row.values["in_range"] is False


def test_a_transfer_step_that_fails_is_named_with_its_cause_and_later_steps_are_reported_not_completed():
    from hf_qwen3_deepstack.selfcheck.transfer import GLOO_LANE, lane_results

    ok = {"ok": True, "problem": None, "tokens": 64, "visual_rows": 21, "bytes": 13320, "chunks": 1}
    reports = {
        0: [("bit-exact, one chunk", True, {}, 0.0), ("bit-exact, many chunks", True, {}, 0.0),
            ("bit-exact, no visual rows", False, "Traceback ...\nRuntimeError: Connection closed by peer", 0.1)],
        1: [("bit-exact, one chunk", True, ok, 0.0),
            ("bit-exact, many chunks", True, {**ok, "ok": False, "problem": "visual_embeds: 3 of 100 values differ"},
             0.0)],
    }
    rows = {r.name.removeprefix("gloo cpu: "): r for r in lane_results(GLOO_LANE, reports, "rank(s) [1] hung")}
    assert rows["bit-exact, one chunk"].status.value == "pass"
    assert rows["bit-exact, many chunks"].status.value == "fail"
    assert rows["bit-exact, many chunks"].figure.startswith("visual_embeds: 3 of 100 values differ")
    assert rows["bit-exact, no visual rows"].status.value == "fail"
    assert rows["bit-exact, no visual rows"].figure == "rank 0 raised: RuntimeError: Connection closed by peer"
    for later in ("resume after an interrupted transfer", "recv after a TransferTimeout", "throughput vs raw send"):
        assert rows[later].status.value == "fail" and rows[later].figure == "not completed: rank(s) [1] hung"
