"""Which `.py` files travel with each output repo (trust_remote_code), and the `auto_map`s.

transformers copies a remote-code module plus every file it pulls in by single-dot relative
import (`from .x import Y`), flat, into its module cache. We copy the same closure and refuse
imports that would not survive that (absolute imports of this package, `from . import x`,
`from ..x`, sub-packages): the files must run with only torch + transformers installed.
"""

from __future__ import annotations

import ast
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PACKAGE_NAME = PACKAGE_DIR.name


class RemoteCodeError(RuntimeError):
    """The remote-code files of a half are missing or would not load from the Hub."""


@dataclass(frozen=True)
class RemoteCode:
    config_module: str
    config_class: str
    modeling_module: str
    auto_classes: dict[str, str]  # Auto class -> model class in modeling_module
    architecture: str

    @property
    def auto_map(self) -> dict[str, str]:
        auto_map = {"AutoConfig": f"{self.config_module}.{self.config_class}"}
        auto_map.update({auto: f"{self.modeling_module}.{cls}" for auto, cls in self.auto_classes.items()})
        return auto_map

    def files(self, package_dir: Path = PACKAGE_DIR) -> list[Path]:
        return code_closure([package_dir / f"{self.config_module}.py", package_dir / f"{self.modeling_module}.py"])


ENCODER_CODE = RemoteCode(
    config_module="configuration_qwen3_vl_moe_encoder_only",
    config_class="Qwen3VLMoeEncoderOnlyConfig",
    modeling_module="modeling_qwen3_vl_moe_encoder_only",
    auto_classes={"AutoModel": "Qwen3VLMoeEncoderOnly"},
    architecture="Qwen3VLMoeEncoderOnly",
)
LM_CODE = RemoteCode(
    config_module="configuration_qwen3_moe_deepstack",
    config_class="Qwen3MoeDeepStackConfig",
    modeling_module="modeling_qwen3_moe_deepstack",
    auto_classes={
        "AutoModel": "Qwen3MoeModelWithDeepStack",
        "AutoModelForCausalLM": "Qwen3MoeForCausalLMWithDeepStack",
    },
    architecture="Qwen3MoeForCausalLMWithDeepStack",
)
DENSE_ENCODER_CODE = RemoteCode(
    config_module="configuration_qwen3_vl_encoder_only",
    config_class="Qwen3VLEncoderOnlyConfig",
    modeling_module="modeling_qwen3_vl_encoder_only",
    auto_classes={"AutoModel": "Qwen3VLEncoderOnly"},
    architecture="Qwen3VLEncoderOnly",
)
DENSE_LM_CODE = RemoteCode(
    config_module="configuration_qwen3_deepstack",
    config_class="Qwen3DeepStackConfig",
    modeling_module="modeling_qwen3_deepstack",
    auto_classes={
        "AutoModel": "Qwen3ModelWithDeepStack",
        "AutoModelForCausalLM": "Qwen3ForCausalLMWithDeepStack",
    },
    architecture="Qwen3ForCausalLMWithDeepStack",
)
# family name -> half -> the code its repo ships
REMOTE_CODE: dict[str, dict[str, RemoteCode]] = {
    "moe": {"encoder": ENCODER_CODE, "lm": LM_CODE},
    "dense": {"encoder": DENSE_ENCODER_CODE, "lm": DENSE_LM_CODE},
}


@dataclass(frozen=True)
class VideoProcessorCode:
    """The encoder repo's video processor as remote code: transformers' Qwen3-VL video processor
    needs torchvision, `tiny_checkpoint/video.py` is the same pipeline in torch + PIL (and picks
    transformers' own class when torchvision is installed)."""

    source: Path = PACKAGE_DIR / "tiny_checkpoint" / "video.py"
    file_name: str = "video_processing_qwen3_vl_pil.py"
    config_name: str = "video_preprocessor_config.json"
    auto_map: tuple[tuple[str, str], ...] = (
        ("AutoVideoProcessor", "video_processing_qwen3_vl_pil.Qwen3VLVideoProcessorForRepo"),)

    def add_to(self, folder: Path) -> None:
        """Copy the code into `folder` and name it in the folder's video processor config."""
        config_file = folder / self.config_name
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["auto_map"] = {**config.get("auto_map", {}), **dict(self.auto_map)}
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        code_closure([self.source])  # it must travel alone
        shutil.copyfile(self.source, folder / self.file_name)


VIDEO_PROCESSOR_CODE = VideoProcessorCode()


def _relative_imports(file: Path) -> list[str]:
    """Flat single-dot relative imports of `file`; raise on imports that cannot travel."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.split(".")[0] == PACKAGE_NAME:
                    raise RemoteCodeError(f"{file.name}: absolute import 'from {node.module} import ...' does not work as Hub remote code; use 'from .module import X'")
                continue
            if node.level > 1 or node.module is None or "." in node.module:
                what = "." * node.level + (node.module or "")
                raise RemoteCodeError(f"{file.name}: relative import 'from {what} import ...' does not travel with trust_remote_code; only flat 'from .module import X' does")
            found.append(node.module)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE_NAME:
                    raise RemoteCodeError(f"{file.name}: 'import {alias.name}' does not work as Hub remote code")
    return found


def code_closure(roots: list[Path]) -> list[Path]:
    """`roots` plus every file they pull in by flat relative import, recursively (sorted, unique)."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        file = todo.pop()
        if file.name in seen:
            continue
        if not file.is_file():
            raise RemoteCodeError(
                f"remote-code file {file.name} not found in {file.parent} (needed by the output repo's auto_map)"
            )
        seen[file.name] = file
        todo.extend(file.parent / f"{mod}.py" for mod in _relative_imports(file))
    return [seen[name] for name in sorted(seen)]


def copy_code(code: RemoteCode, folder: Path, package_dir: Path = PACKAGE_DIR) -> list[str]:
    names = []
    for file in code.files(package_dir):
        shutil.copyfile(file, folder / file.name)
        names.append(file.name)
    return names
