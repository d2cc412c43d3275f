"""Packages for setuptools; everything else is in pyproject.toml.

The model-card templates have one copy, `model_cards/` at the top of the source tree; the wheel
ships it as `hf_qwen3_deepstack/model_cards/` (pyproject.toml cannot map a folder into a package
next to automatic package discovery).
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["hf_qwen3_deepstack", "hf_qwen3_deepstack.*"]), "hf_qwen3_deepstack.model_cards"],
    package_dir={"hf_qwen3_deepstack.model_cards": "model_cards"},
)
