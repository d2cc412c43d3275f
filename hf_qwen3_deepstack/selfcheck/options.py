"""Options of `hf-qwen3-deepstack selfcheck` (typed), and the test-only fault switch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

CHECK_GROUPS = ("environment", "parity", "transfer", "runtime", "server")

# Test-only: makes one check fail on purpose, to prove that a failure is caught and named.
FAULT_ENV = "HF_QWEN3_DEEPSTACK_SELFCHECK_FAULT"
FAULTS = {
    "split-weight": "one weight of the split language model copy is perturbed (parity must fail)",
}


@dataclass
class SelfcheckOptions:
    device: str = "auto"  # auto | cpu | cuda
    json: str | None = None  # also write the report here
    checks: tuple[str, ...] = CHECK_GROUPS
    family: str = "moe"  # a key of hf_qwen3_deepstack.families.FAMILIES
    workdir: str | None = None  # tiny checkpoints, images and runtime files (default: a temp dir, removed)
    fault: str | None = field(default_factory=lambda: os.environ.get(FAULT_ENV) or None)

    def check(self) -> None:
        """ValueError naming the first bad option and what was expected."""
        from hf_qwen3_deepstack.families import FAMILIES

        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        unknown = [c for c in self.checks if c not in CHECK_GROUPS]
        if unknown or not self.checks:
            raise ValueError(f"--checks: unknown group(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                             f"expected a comma-separated subset of {','.join(CHECK_GROUPS)}")
        if self.family not in FAMILIES:
            raise ValueError(f"--family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"{FAULT_ENV}={self.fault!r} is not a known fault; expected one of "
                             f"{', '.join(FAULTS)} (test-only) or unset")
