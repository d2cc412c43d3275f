"""The outcome of `selfcheck`: one `CheckResult` per row, gathered in a `SelfcheckReport` that prints
as a table (rich) and serialises to JSON."""

from __future__ import annotations

import enum
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class Status(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"  # worth a look, not a failure (e.g. an untested transformers version, slow transfer)
    SKIP = "skip"  # not applicable here (no GPU, no `serve` command...)


@dataclass
class CheckResult:
    group: str  # environment | parity | transfer | runtime | server
    name: str  # what was checked, e.g. "fp32 cpu: image"
    status: Status
    figure: str  # the measured figure against its bound, readable
    values: dict[str, Any] = field(default_factory=dict)  # the same figures as numbers, for the JSON report
    seconds: float = 0.0

    @property
    def title(self) -> str:
        return f"{self.group} / {self.name}"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status.value
        return out


@dataclass
class SelfcheckReport:
    device: str  # as asked for: auto | cpu | cuda
    family: str  # a key of hf_qwen3_deepstack.families.FAMILIES
    environment: dict[str, Any]
    resolved_device: str | None = None  # what `device` resolved to (None: not available)
    results: list[CheckResult] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status is Status.FAIL]

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "device": self.device,
            "resolved_device": self.resolved_device,
            "family": self.family,
            "elapsed_s": round(self.elapsed_s, 3),
            "environment": self.environment,
            "checks": [r.to_json() for r in self.results],
            "failures": [f"{r.title}: {r.figure}" for r in self.failures],
        }

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    def print_table(self, file=None) -> None:
        from rich.console import Console
        from rich.table import Table

        file = file or sys.stdout
        console = Console(file=file, width=None if file.isatty() else 160, highlight=False)
        table = Table(title=f"hf-qwen3-deepstack selfcheck (family {self.family}, --device {self.device})")
        for column in ("check", "what", "result", "figure", "s"):
            table.add_column(column, justify="right" if column == "s" else "left")
        style = {Status.PASS: "green", Status.FAIL: "bold red", Status.WARN: "yellow", Status.SKIP: "dim"}
        for r in self.results:
            table.add_row(r.group, r.name, f"[{style[r.status]}]{r.status.value.upper()}[/]", r.figure,
                          f"{r.seconds:.1f}")
        console.print(table)
        counts = {s: sum(r.status is s for r in self.results) for s in Status}
        console.print(", ".join(f"{n} {s.value}" for s, n in counts.items()) + f" in {self.elapsed_s:.0f} s")
        for r in self.failures:
            console.print(f"[bold red]FAILED[/] {r.title}: {r.figure}")
