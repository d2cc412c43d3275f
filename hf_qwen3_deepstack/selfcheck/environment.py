"""Check 1, the environment: Python, torch, CUDA, NCCL, GPUs and transformers versions, and whether
the device asked for is there. transformers outside the range this package declares is a warning."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import torch

from .report import CheckResult, Status

PACKAGE = "hf-qwen3-deepstack"
SUPPORTED_TRANSFORMERS_FALLBACK = ">=5.23,<5.24"  # when the package metadata is not installed (source tree)


def supported_transformers() -> str:
    """The transformers range from this package's own requirements (pyproject), so there is one source."""
    from packaging.requirements import Requirement

    try:
        for line in metadata.requires(PACKAGE) or []:
            req = Requirement(line)
            if req.name == "transformers" and not req.marker:
                return ",".join(str(s) for s in sorted(req.specifier, key=lambda s: s.operator.startswith("<")))
    except metadata.PackageNotFoundError:
        pass
    return SUPPORTED_TRANSFORMERS_FALLBACK


def describe() -> dict[str, Any]:
    """Versions and devices, as plain values (the JSON report's `environment`)."""
    import transformers

    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    nccl = None
    if cuda and torch.distributed.is_nccl_available():
        version = torch.cuda.nccl.version()
        nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "cuda_available": cuda,
        "nccl": nccl,
        "gloo": torch.distributed.is_gloo_available(),
        "gpus": gpus,
        "transformers": transformers.__version__,
        "transformers_supported": supported_transformers(),
    }


def resolve_device(requested: str) -> torch.device | None:
    """auto -> cuda when available, else cpu; None when cuda was asked for and is not there."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", 0) if torch.cuda.is_available() else None


def run(env: dict[str, Any], requested: str, device: torch.device | None) -> list[CheckResult]:
    from packaging.specifiers import SpecifierSet

    rows = [
        CheckResult("environment", "python", Status.PASS, env["python"], {"version": env["python"]}),
        CheckResult("environment", "torch", Status.PASS,
                    f"{env['torch']} (CUDA build: {env['torch_cuda_build'] or 'none, CPU-only'})",
                    {"version": env["torch"], "cuda_build": env["torch_cuda_build"]}),
    ]
    supported = env["transformers_supported"]
    in_range = SpecifierSet(supported).contains(env["transformers"], prereleases=True)
    rows.append(CheckResult(
        "environment", "transformers", Status.PASS if in_range else Status.WARN,
        f"{env['transformers']} ({'within' if in_range else 'OUTSIDE'} the supported range {supported}"
        f"{'' if in_range else ': results may differ, install transformers' + supported})",
        {"version": env["transformers"], "supported": supported, "in_range": in_range}))
    if env["cuda_available"]:
        names = ", ".join(f"{n} x{env['gpus'].count(n)}" for n in dict.fromkeys(env["gpus"]))
        rows.append(CheckResult("environment", "GPUs", Status.PASS, f"{len(env['gpus'])}: {names}",
                                {"count": len(env["gpus"]), "names": env["gpus"]}))
        rows.append(CheckResult("environment", "NCCL", Status.PASS if env["nccl"] else Status.WARN,
                                env["nccl"] or "not available: the GPU transfer cannot use NCCL",
                                {"version": env["nccl"]}))
    else:
        rows.append(CheckResult("environment", "GPUs", Status.SKIP, "none visible (torch.cuda.is_available() is "
                                "False)", {"count": 0}))
    if device is None:
        rows.append(CheckResult(
            "environment", "device", Status.FAIL,
            f"--device {requested} asked for, but torch.cuda.is_available() is False (torch {env['torch']}, "
            f"CUDA build {env['torch_cuda_build'] or 'none'}): install a CUDA build of torch or use --device cpu",
            {"requested": requested, "device": None}))
    else:
        rows.append(CheckResult("environment", "device", Status.PASS, f"{device} (--device {requested})",
                                {"requested": requested, "device": str(device)}))
    return rows
