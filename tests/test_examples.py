"""The documented `hf-qwen3-deepstack run --requests examples/requests.jsonl` needs nothing but a
clone: every image the sample requests name is in the repository (git-tracked), and they are the
package's deterministic sample images."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_qwen3_deepstack.tiny_checkpoint.build import write_sample_images

REPO = Path(__file__).resolve().parents[1]


def image_paths() -> list[str]:
    paths = []
    for line in (REPO / "examples" / "requests.jsonl").read_text().splitlines():
        for message in json.loads(line)["messages"]:
            for item in message["content"]:
                if item["type"] in ("image", "video"):
                    value = item[item["type"]]
                    paths += value if isinstance(value, list) else [value]
    return paths


def test_sample_requests_name_images_shipped_in_the_repository(tmp_path):
    paths = image_paths()
    assert len(paths) == 7
    generated = {p.name: p for p in write_sample_images(tmp_path)}
    for path in paths:
        shipped = REPO / path
        assert shipped.is_file(), path
        assert np.array_equal(np.asarray(Image.open(shipped)), np.asarray(Image.open(generated[shipped.name]))), path


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_sample_images_are_tracked_by_git():
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", *image_paths()], cwd=REPO,
                             capture_output=True, text=True)
    assert tracked.returncode == 0, tracked.stderr
