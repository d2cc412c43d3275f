"""Run Python in a fresh process where `hf_qwen3_deepstack` cannot be imported.

That is what a user of the published repos has: torch + transformers (+ huggingface_hub), and
the remote code that `trust_remote_code=True` fetches from the repo itself. The child runs with
`-P` (no script/cwd on sys.path), in an empty working folder, without PYTHONPATH, and with a
`sys.meta_path` blocker, and it asserts the import really fails before running the code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

_PRELUDE = '''
import sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "hf_qwen3_deepstack" or name.startswith("hf_qwen3_deepstack."):
            raise ImportError(f"{name} is blocked: this process must only use Hub remote code")
        return None

sys.meta_path.insert(0, _Block())
try:
    import hf_qwen3_deepstack  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("hf_qwen3_deepstack is importable in the isolated process")
'''


def run_isolated(code: str, *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run `code` isolated from this package; returns stdout, raises with stderr on failure."""
    cwd.mkdir(parents=True, exist_ok=True)
    child_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    child_env.update({"PYTHONNOUSERSITE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})})
    script = _PRELUDE + "\n" + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-P", "-c", script], cwd=cwd, env=child_env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"isolated process failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def run_repo_python(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 300,
                    check: bool = True) -> subprocess.CompletedProcess:
    """Run `python ARGS` with this checkout importable (for the CLI and memory measurements)."""
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), child_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    child_env.update(env or {})
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=child_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"python {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
