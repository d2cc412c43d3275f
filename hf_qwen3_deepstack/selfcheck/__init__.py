"""`hf-qwen3-deepstack selfcheck`: one command that proves an install on the hardware at hand.

    hf-qwen3-deepstack selfcheck [--device auto|cpu|cuda] [--json PATH] [--checks parity,transfer,...]

Modules: `options` (typed options), `runner` (runs the groups), `report` (rows, table, JSON), one
module per check group: `environment`, `parity`, `transfer` (+ `transfer_ranks`, what the two spawned
ranks run), `runtime`, `server`; `context` (tiny checkpoint, images and models shared by the
checks, for one family of `hf_qwen3_deepstack.families`), `inputs` (the prompts).
"""

from .options import SelfcheckOptions
from .report import CheckResult, SelfcheckReport, Status

__all__ = ["CheckResult", "SelfcheckOptions", "SelfcheckReport", "Status", "run_selfcheck"]


def run_selfcheck(options: SelfcheckOptions) -> SelfcheckReport:
    from .runner import run_selfcheck as run

    return run(options)
