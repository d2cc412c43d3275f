"""The torchrun snippet of the published model cards runs as printed and generates transformers' tokens.

The snippet is taken from the rendered `README.md` of a split repo, pointed at the split folders
and a sample image, and run with `torchrun --nproc-per-node 2` with plain transformers (no
torchvision here: the encoder repo's processor remote code covers the video processor). Both
halves and the video processor must come from the repos' remote code (`transformers_modules`),
and rank 1's greedy tokens must equal those of the monolithic
`Qwen3VLMoeForConditionalGeneration` on the original checkpoint.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

import torch

_REPORT = """
import json as _json, os as _os
_rank = int(_os.environ["RANK"])
_report = {"module": type(encoder if _rank == 0 else lm).__module__}
if _rank == 0:
    _report["video_processor"] = type(processor.video_processor).__module__
if _rank == 1:
    _report["tokens"] = generated[0, s:].tolist()
with open(f"rank{_rank}.json", "w") as _f:
    _json.dump(_report, _f)
"""


def _card_snippet(card: str) -> str:
    section = card.split("## Two rank groups with torchrun", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_card_torchrun_snippet_matches_monolithic_tokens(tiny_checkpoint_dir, sample_images, tmp_path):
    from transformers import Qwen3VLMoeForConditionalGeneration

    from hf_qwen3_deepstack.hub.split import split_checkpoint
    from hf_qwen3_deepstack.tiny_checkpoint.video import load_processor

    enc_repo, lm_repo = tmp_path / "encoder", tmp_path / "lm"
    split_checkpoint(tiny_checkpoint_dir, enc_repo, lm_repo, dtype="float32", progress=False,
                     encoder_repo_id="org/tiny-encoder", lm_repo_id="org/tiny-lm")
    snippet = _card_snippet((lm_repo / "README.md").read_text())
    assert snippet == _card_snippet((enc_repo / "README.md").read_text())
    assert 'ENCODER, LM = "org/tiny-encoder", "org/tiny-lm"' in snippet and '"photo.jpg"' in snippet
    image = sample_images[2]
    script = snippet.replace('"org/tiny-encoder"', repr(str(enc_repo))).replace('"org/tiny-lm"', repr(str(lm_repo)))
    script = script.replace('"photo.jpg"', repr(str(image)))
    script = script + _REPORT  # as printed: no torchvision here, the repo's processor code copes
    ast.parse(script)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "two_groups.py").write_text(script)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
         "--rdzv-endpoint", "localhost:0", "--max-restarts", "0", "two_groups.py"],
        cwd=tmp_path / "run", env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    reports = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["module"].startswith("transformers_modules.") for r in reports), reports
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        assert reports[0]["video_processor"].startswith("transformers_modules."), reports
    got = reports[1]["tokens"]

    processor = load_processor(tiny_checkpoint_dir)
    messages = [{"role": "user", "content": [{"type": "image", "image": str(image)},
                                             {"type": "text", "text": "Describe the picture."}]}]
    inputs = processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                           return_dict=True, return_tensors="pt")
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(tiny_checkpoint_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        want = model.generate(**inputs, max_new_tokens=64, do_sample=False)
    want = want[0, inputs["input_ids"].shape[1]:].tolist()
    assert len(want) > 8
    assert got == want


def _python_blocks_before_torchrun(card: str) -> str:
    head = card.split("## Two rank groups with torchrun", 1)[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", head, re.S))


def test_card_python_examples_run_as_printed_with_plain_transformers(tiny_checkpoint_dir, sample_images, tmp_path):
    """Every python block of both cards (load, encode, generate), run in order as one script in a
    process that has only torch and transformers to work with (HF_HUB_OFFLINE, no package import)."""
    from hf_qwen3_deepstack.hub.split import split_checkpoint

    enc_repo, lm_repo = tmp_path / "encoder", tmp_path / "lm"
    split_checkpoint(tiny_checkpoint_dir, enc_repo, lm_repo, dtype="float32", progress=False,
                     encoder_repo_id="org/tiny-encoder", lm_repo_id="org/tiny-lm")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    for repo in (enc_repo, lm_repo):
        script = _python_blocks_before_torchrun((repo / "README.md").read_text())
        assert script.count("from_pretrained(") >= 3 and "generate(" in script
        script = script.replace('"org/tiny-encoder"', repr(str(enc_repo))).replace('"org/tiny-lm"', repr(str(lm_repo)))
        script = script.replace('"photo.jpg"', repr(str(sample_images[0])))
        script += "\nassert not any(m.startswith('hf_qwen3_deepstack') for m in __import__('sys').modules)\n"
        (tmp_path / "card.py").write_text(script)
        proc = subprocess.run([sys.executable, "card.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"{repo.name} card:\n{proc.stderr[-4000:]}"
