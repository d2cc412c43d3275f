"""Shared, generic fixtures. Keep this file small: helpers for one area live in that area's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory):
    """The complete tiny Qwen3-VL-MoE checkpoint (weights + processor files), once per session."""
    from hf_qwen3_deepstack.tiny_checkpoint.build import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint") / "tiny", seed=0)


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory):
    """[square_64x64.png, wide_96x64.png, landscape_128x96.png, frame_0.png .. frame_3.png]."""
    from hf_qwen3_deepstack.tiny_checkpoint.build import write_sample_images

    return write_sample_images(tmp_path_factory.mktemp("sample-images"))
