"""Split a Qwen3-VL-MoE or dense Qwen3-VL checkpoint into two loadable repos: the vision encoder and
the DeepStack LM. The family comes from the source's `model_type` (`qwen3_vl_moe` or `qwen3_vl`).

    from hf_qwen3_deepstack.hub import split_checkpoint
    result = split_checkpoint("Qwen/Qwen3-VL-30B-A3B-Instruct", "out/encoder", "out/lm", dtype="bfloat16")

Streaming: tensors are copied chunk by chunk from the source shards to the output shards
(`safetensors_io`), so peak memory is a few 4 MiB chunks whatever the checkpoint size. Every
check that can fail (config, missing, truncated or malformed shards, key coverage, shapes, output
folders) runs before anything is written. The repos are written into temporary sibling folders
and renamed into place at the very end, with SIGINT/SIGTERM held over those renames: after a
failure or a SIGINT/SIGTERM at any point the output paths hold either the old folders (or none)
or both new repos, never a mix, and no temporary folder is left.

Output keys: encoder repo `model.visual.*`; language repo `model.language_model.*` and
`lm_head.weight` (omitted when the source ties embeddings and has none). Fused experts (MoE) are
written in the Hub layout, gate_up_proj (E, H, 2I) and down_proj (E, I, H), whatever the source
layout (transformers 5 writes (E, 2I, H) / (E, H, I)).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..checkpoint_view import read_weight_map
from ..cli_values import format_size, parse_dtype, parse_size
from ..families import FAMILIES, ModelFamily
from .interruption import Interrupted, signals_held, signals_raise_interrupted
from .model_card import CardInfo, render_card
from .remote_code import REMOTE_CODE, VIDEO_PROCESSOR_CODE, RemoteCode, RemoteCodeError, copy_code
from .safetensors_io import PlannedTensor, SafetensorsError, TensorInfo, read_header, write_shard
from .source import ResolvedSource, SourceError, is_hub_id, read_json, read_source_card_license, resolve_source

logger = logging.getLogger(__name__)

Half = Literal["encoder", "lm"]
ENCODER_PREFIX = "model.visual."
LM_PREFIX = "model.language_model."
LM_HEAD = "lm_head.weight"
GATE_UP, DOWN = "mlp.experts.gate_up_proj", "mlp.experts.down_proj"

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "tokenizer.model", "chat_template.jinja", "chat_template.json",
)
PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json")
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE")
EXTRA_FILES: dict[str, tuple[str, ...]] = {
    "encoder": PROCESSOR_FILES + TOKENIZER_FILES + LICENSE_FILES,
    "lm": TOKENIZER_FILES + LICENSE_FILES,
}


class SplitError(ValueError):
    """The split cannot run (bad source, bad output folder, bad option): nothing was written."""


# --------------------------------------------------------------------------------------------
# layouts


def expert_transpose_needed(key: str, shape: tuple[int, ...], hidden: int, inter: int, num_experts: int,
                            transformers_layout_hint: bool) -> bool:
    """True when a fused expert tensor is in transformers 5's layout and must be transposed to
    the Hub layout: gate_up_proj (E, H, 2I) / down_proj (E, I, H). Raises on any other shape."""
    if key.endswith(GATE_UP):
        hub, tf = (num_experts, hidden, 2 * inter), (num_experts, 2 * inter, hidden)
    elif key.endswith(DOWN):
        hub, tf = (num_experts, inter, hidden), (num_experts, hidden, inter)
    else:
        return False
    if hub == tf:  # H == 2I (or H == I): the shapes cannot tell; trust the writer's version
        return transformers_layout_hint
    if shape == hub:
        return False
    if shape == tf:
        return True
    raise SplitError(
        f"{key} has shape {list(shape)}; a Qwen3-VL-MoE fused expert tensor must be {list(hub)} (Hub layout) "
        f"or {list(tf)} (transformers layout) for E={num_experts}, H={hidden}, I={inter}"
    )


# --------------------------------------------------------------------------------------------
# plan


@dataclass
class RepoPlan:
    half: Half
    out: Path
    repo_id: str  # push target or folder name, used in the cards
    other_repo_id: str  # the same for the other half
    code: RemoteCode
    config: object  # PreTrainedConfig of the half
    family: ModelFamily = FAMILIES["moe"]
    shards: list[list[PlannedTensor]] = field(default_factory=list)
    extra_files: list[Path] = field(default_factory=list)  # copied verbatim from the source
    dtype_name: str = "auto"
    transposed: int = 0  # fused expert tensors converted to the Hub layout
    sizes_known: bool = True

    @property
    def ships_video_processor(self) -> bool:
        return any(p.name == VIDEO_PROCESSOR_CODE.config_name for p in self.extra_files)

    @property
    def tensors(self) -> list[PlannedTensor]:
        return [t for shard in self.shards for t in shard]

    @property
    def total_size(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def shard_names(self) -> list[str]:
        n = len(self.shards)
        if n == 1:
            return ["model.safetensors"]
        return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    def file_names(self) -> list[str]:
        names = ["README.md", "config.json", "generation_config.json", *self.shard_names()]
        if len(self.shards) > 1:
            names.append("model.safetensors.index.json")
        names += [p.name for p in self.code.files()]
        names += [p.name for p in self.extra_files]
        if self.ships_video_processor:
            names.append(VIDEO_PROCESSOR_CODE.file_name)
        return sorted(set(names))


@dataclass
class SplitResult:
    source: ResolvedSource
    encoder: RepoPlan
    lm: RepoPlan
    dry_run: bool
    skipped_keys: list[str] = field(default_factory=list)
    base_model: str | None = None  # Hub id of the source, for the cards' metadata; None: unknown

    def describe(self) -> str:
        verb = "would write" if self.dry_run else "wrote"
        lines = [f"source: {self.source.revision_label}"]
        if self.skipped_keys:
            lines.append(f"  ignored {len(self.skipped_keys)} tensors that belong to neither half "
                         f"(e.g. {self.skipped_keys[0]})")
        for plan in (self.encoder, self.lm):
            size = format_size(plan.total_size) if plan.sizes_known else "size known after download"
            experts = ""
            if plan.family.has_experts:
                experts = f", {plan.transposed} expert tensors transposed to the Hub layout"
            lines.append(f"{plan.half}: {verb} {plan.out} ({len(plan.tensors)} tensors, {size}, "
                         f"{len(plan.shards)} shard(s), dtype {plan.dtype_name}{experts})")
            for name in plan.file_names():
                lines.append(f"  {name}")
        return "\n".join(lines)


def _check_output(out: Path, src: Path, overwrite: bool, what: str) -> None:
    out_r = out.resolve()
    if out_r == src or src.is_relative_to(out_r) or out_r.is_relative_to(src):
        raise SplitError(f"{what} {out} overlaps the source folder {src}; choose a folder outside it")
    if out_r.exists():
        if not out_r.is_dir():
            raise SplitError(f"{what} {out} exists and is not a folder")
        if any(out_r.iterdir()) and not overwrite:
            raise SplitError(f"{what} {out} exists and is not empty; pass --overwrite (overwrite=True) to replace it")


def _weight_files(path: Path, allow_missing: bool) -> tuple[list[Path], dict[str, str] | None]:
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        try:
            weight_map = read_weight_map(index_file)
        except ValueError as e:
            raise SplitError(str(e)) from e
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (path / n).is_file()]
        if missing and not allow_missing:
            raise SplitError(
                f"source checkpoint {path} is incomplete: {len(missing)} shard(s) listed in "
                f"model.safetensors.index.json are missing: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "")
            )
        return [path / n for n in names], weight_map
    single = path / "model.safetensors"
    if single.is_file():
        return [single], None
    others = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf"))
    hint = f" (found {', '.join(others[:3])}; only safetensors sources are supported)" if others else ""
    raise SplitError(f"no safetensors weights in {path}: expected model.safetensors or model.safetensors.index.json{hint}")


_EXPECTED_SRC = "a Qwen3-VL-MoE checkpoint (model_type 'qwen3_vl_moe') or a dense Qwen3-VL one ('qwen3_vl')"


def _load_vl_config(path: Path) -> tuple[ModelFamily, object, dict]:
    """(family, full config, raw config.json) of the source; SplitError naming what is wrong."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise SplitError(f"{path} has no config.json; SRC must be {_EXPECTED_SRC}")
    try:
        raw = read_json(cfg_file)
    except SourceError as e:
        raise SplitError(str(e)) from e
    if not isinstance(raw, dict) or not isinstance(raw.get("text_config", {}), dict):
        raise SplitError(f"{cfg_file} is not a Qwen3-VL config: expected a JSON object with a text_config object")
    model_type = raw.get("model_type")
    family = next((f for f in FAMILIES.values() if f.vl_model_type == model_type), None)
    if family is None:
        text_family = next((f for f in FAMILIES.values() if f.text_model_type == model_type), None)
        raise SplitError(
            f"SRC is not {_EXPECTED_SRC}: {cfg_file} has model_type {model_type!r}"
            + (f" (a text-only checkpoint loads directly into {text_family.lm_path.rsplit('.', 1)[-1]}; "
               "there is nothing to split)" if text_family else "")
        )
    if raw.get("quantization_config") or raw.get("text_config", {}).get("quantization_config"):
        raise SplitError(f"quantized {family.display_name} checkpoints (quantization_config) are not supported by split")
    try:
        cfg = family.monolithic_class().config_class.from_dict(raw)
    except Exception as e:  # noqa: BLE001 - any config error is a bad source
        raise SplitError(f"{cfg_file} is not a valid {family.display_name} config: {e}") from e
    return family, cfg, raw


def _expected_shapes(family: ModelFamily, cfg) -> dict[str, tuple[int, ...]]:
    """Parameter/buffer shapes of the monolithic model, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = family.monolithic_class()(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _repo_id(out: Path, given: str | None) -> str:
    return given or out.name


def plan_split(
    source: ResolvedSource,
    encoder_out: Path,
    lm_out: Path,
    *,
    dtype: str | torch.dtype | None = "auto",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    encoder_repo_id: str | None = None,
    lm_repo_id: str | None = None,
    allow_missing_shards: bool = False,
) -> SplitResult:
    """Validate everything and decide what goes where; reads headers only, writes nothing."""
    try:
        out_dtype = parse_dtype(dtype)
    except ValueError as e:
        raise SplitError(f"--dtype: {e}") from e
    try:
        shard_limit = parse_size(max_shard_size)
    except ValueError as e:
        raise SplitError(f"--max-shard-size: {e}") from e
    path = source.path
    if encoder_out.resolve() == lm_out.resolve():
        raise SplitError("--encoder-out and --lm-out must be different folders")
    if encoder_out.resolve().is_relative_to(lm_out.resolve()) or lm_out.resolve().is_relative_to(encoder_out.resolve()):
        raise SplitError("--encoder-out and --lm-out must not be nested in each other")
    _check_output(encoder_out, path, overwrite, "encoder output folder")
    _check_output(lm_out, path, overwrite, "language-model output folder")

    family, full_cfg, raw_cfg = _load_vl_config(path)
    files, weight_map = _weight_files(path, allow_missing_shards)
    # headers: validates every shard (truncation, malformed headers) before any output exists
    infos: dict[str, TensorInfo] = {}
    file_order = {f: i for i, f in enumerate(files)}
    sizes_known = True
    for file in files:
        if not file.is_file():
            sizes_known = False
            continue
        try:
            header, _ = read_header(file)
        except SafetensorsError as e:
            raise SplitError(f"source checkpoint is damaged: {e}") from e
        for name, info in header.items():
            if name in infos:
                raise SplitError(f"tensor {name} appears in both {infos[name].file.name} and {file.name}")
            infos[name] = info
    if weight_map is not None and sizes_known:
        for name, shard in weight_map.items():
            if name not in infos or infos[name].file.name != shard:
                raise SplitError(f"model.safetensors.index.json maps {name} to {shard}, which does not contain it")

    expected = _expected_shapes(family, full_cfg)
    text = full_cfg.text_config
    tied = bool(getattr(full_cfg, "tie_word_embeddings", False))
    names = set(infos) if sizes_known else set(weight_map or {})
    required = {k for k in expected if not (k == LM_HEAD and tied)}
    missing = sorted(required - names)
    if missing:
        raise SplitError(
            f"source checkpoint is missing {len(missing)} tensor(s) of {family.display_name}, "
            f"e.g. {', '.join(missing[:3])}"
        )
    skipped = sorted(k for k in names if k not in expected)
    if skipped:
        logger.warning("ignoring %d source tensors that belong to neither half, e.g. %s", len(skipped), skipped[0])

    tf_hint = str(raw_cfg.get("transformers_version", "4")).split(".")[0].isdigit() and int(
        str(raw_cfg.get("transformers_version", "4")).split(".")[0]) >= 5

    enc_cfg = family.encoder_config_class().from_full_config(full_cfg)
    lm_cfg = family.lm_config_class().from_vl_config(full_cfg)
    code_of = REMOTE_CODE[family.name]
    plans = {}
    for half, out, cfg, code, prefix, given_id, other_id, other_out in (
        ("encoder", encoder_out, enc_cfg, code_of["encoder"], (ENCODER_PREFIX,), encoder_repo_id, lm_repo_id, lm_out),
        ("lm", lm_out, lm_cfg, code_of["lm"], (LM_PREFIX, LM_HEAD), lm_repo_id, encoder_repo_id, encoder_out),
    ):
        try:
            code.files()  # fail now, not after copying gigabytes, when remote code is missing/broken
        except RemoteCodeError as e:
            raise SplitError(str(e)) from e
        plan = RepoPlan(half, out, _repo_id(out, given_id), _repo_id(other_out, other_id), code, cfg, family,
                        sizes_known=sizes_known)
        keys = sorted((k for k in names if k in expected and k.startswith(prefix)))
        if not sizes_known:
            plan.shards = [[]]
        else:
            planned = []
            for key in sorted(keys, key=lambda k: (file_order[infos[k].file], infos[k].begin)):
                info = infos[key]
                fused = family.has_experts and key.endswith((GATE_UP, DOWN))
                transpose = False
                if fused:
                    transpose = expert_transpose_needed(key, info.shape, text.hidden_size, text.moe_intermediate_size,
                                                        text.num_experts, tf_hint)
                shape = (info.shape[0], info.shape[2], info.shape[1]) if transpose else info.shape
                # transformers holds fused experts transposed: compare in its layout
                check = (shape[0], shape[2], shape[1]) if fused else shape
                if check != expected[key]:
                    raise SplitError(f"{key} has shape {list(info.shape)}, expected {list(expected[key])} for this config")
                target = out_dtype if (out_dtype is not None and info.dtype.is_floating_point) else info.dtype
                planned.append(PlannedTensor(key, info, target, shape, transpose))
                plan.transposed += transpose
            plan.shards = _pack(planned, shard_limit)
        floats = Counter(t.dtype for t in plan.tensors if t.dtype.is_floating_point)
        if out_dtype is not None:
            plan.dtype_name = str(out_dtype).removeprefix("torch.")
        elif floats:
            plan.dtype_name = str(floats.most_common(1)[0][0]).removeprefix("torch.")
        else:
            plan.dtype_name = str(raw_cfg.get("dtype") or raw_cfg.get("torch_dtype") or
                                  raw_cfg.get("text_config", {}).get("dtype") or "bfloat16")
        plan.extra_files = [path / n for n in EXTRA_FILES[half] if (path / n).is_file()]
        if plan.ships_video_processor:
            video_config = path / VIDEO_PROCESSOR_CODE.config_name
            try:
                if not isinstance(read_json(video_config), dict):
                    raise SourceError(f"{video_config} is not a JSON object")
            except SourceError as e:
                raise SplitError(str(e)) from e
        plans[half] = plan
    return SplitResult(source, plans["encoder"], plans["lm"], dry_run=False, skipped_keys=skipped)


def _pack(tensors: list[PlannedTensor], limit: int) -> list[list[PlannedTensor]]:
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


# --------------------------------------------------------------------------------------------
# write


def _prepare_config(plan: RepoPlan):
    cfg = plan.config
    cfg.auto_map = plan.code.auto_map
    cfg.architectures = [plan.code.architecture]
    cfg.dtype = plan.dtype_name
    return cfg


def _write_repo(plan: RepoPlan, tmp: Path, result: SplitResult, card_license: dict, on_bytes) -> None:
    source = result.source.path
    weight_map = {}
    for name, shard in zip(plan.shard_names(), plan.shards):
        write_shard(tmp / name, shard, metadata={"format": "pt"}, on_bytes=on_bytes)
        weight_map.update({t.name: name for t in shard})
    if len(plan.shards) > 1:
        index = {"metadata": {"total_size": plan.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    _prepare_config(plan).save_pretrained(tmp)
    copy_code(plan.code, tmp)
    for file in plan.extra_files:
        shutil.copyfile(file, tmp / file.name)
    if plan.ships_video_processor:
        VIDEO_PROCESSOR_CODE.add_to(tmp)
    gen = source / "generation_config.json"
    if gen.is_file():
        shutil.copyfile(gen, tmp / "generation_config.json")
    else:
        from transformers import GenerationConfig

        lm_cfg = plan.config if plan.half == "lm" else result.lm.config
        GenerationConfig.from_model_config(lm_cfg).save_pretrained(tmp)
    render_card(_card_info(plan, result, card_license)).save(tmp / "README.md")


def _card_info(plan: RepoPlan, result: SplitResult, license_: dict) -> CardInfo:
    cfg = plan.config
    if plan.half == "encoder":
        vision = cfg.vision_config
        details = dict(
            num_deepstack_levels=len(vision.deepstack_visual_indexes),
            vision_depth=vision.depth,
            vision_hidden_size=vision.hidden_size,
            text_hidden_size=cfg.text_hidden_size,
            deepstack_visual_indexes=list(vision.deepstack_visual_indexes),
        )
    else:
        decoder = f"{cfg.num_hidden_layers} layers, hidden size {cfg.hidden_size}"
        if plan.family.has_experts:
            decoder = (f"Qwen3-MoE decoder ({decoder}, {cfg.num_experts} experts, "
                       f"{cfg.num_experts_per_tok} active per token)")
        else:
            decoder = f"Qwen3 decoder ({decoder}, intermediate size {cfg.intermediate_size})"
        details = dict(
            num_deepstack_levels=cfg.num_deepstack_levels,
            decoder_description=decoder,
            has_lm_head=any(t.name == LM_HEAD for t in plan.tensors),
        )
    return CardInfo(
        half=plan.half,
        repo_id=plan.repo_id,
        other_repo_id=plan.other_repo_id,
        base_model=result.base_model,
        source_revision=result.source.revision_label,
        dtype=plan.dtype_name,
        num_tensors=len(plan.tensors),
        total_size=plan.total_size,
        model_type=cfg.model_type,
        family=plan.family,
        num_shards=len(plan.shards),
        license=license_,
        details=details,
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _sibling(final: Path, tag: str) -> Path:
    """A new hidden name next to `final`."""
    return final.with_name(f".{final.name}.{tag}-{uuid.uuid4().hex[:12]}")


def split_checkpoint(
    src: str | os.PathLike,
    encoder_out: str | os.PathLike,
    lm_out: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = "auto",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    revision: str | None = None,
    encoder_repo_id: str | None = None,
    lm_repo_id: str | None = None,
    base_model: str | None = None,
    token: str | bool | None = None,
) -> SplitResult:
    """Split SRC (local folder or Hub id) into an encoder repo and a language-model repo.

    `encoder_repo_id` / `lm_repo_id` (the push targets, if any) only name the halves in the
    model cards; they default to the output folder names. `base_model` (a Hub id) is written as
    the cards' `base_model`; without it SRC's Hub id is, when known (a Hub id, or a folder in the
    Hub cache), and none for another local folder.
    Raises `SplitError` (a ValueError) with a clear message before anything is written when the
    split cannot succeed, and `Interrupted` (a KeyboardInterrupt) on SIGINT/SIGTERM, with
    `.outputs` saying whether the output paths hold the old folders or the new repos.
    """
    encoder_out, lm_out = Path(encoder_out).expanduser(), Path(lm_out).expanduser()
    if base_model is not None and not is_hub_id(base_model):
        raise SplitError(f"--base-model {base_model!r} is not a Hub repo id (ORG/NAME)")
    try:
        source = resolve_source(src, revision=revision, metadata_only=dry_run, token=token)
    except SourceError as e:
        raise SplitError(str(e)) from e
    result = plan_split(
        source, encoder_out, lm_out, dtype=dtype, max_shard_size=max_shard_size, overwrite=overwrite,
        encoder_repo_id=encoder_repo_id, lm_repo_id=lm_repo_id, allow_missing_shards=dry_run,
    )
    result.dry_run = dry_run
    result.base_model = base_model or source.repo_id
    if dry_run:
        return result
    with signals_raise_interrupted():
        try:
            _write_and_move(result, progress)
        except Interrupted as e:
            e.outputs = e.outputs or "old"  # a signal before writing began
            raise
    return result


def _write_and_move(result: SplitResult, progress: bool) -> None:
    """Write both repos into hidden sibling folders, then swap them in for the outputs together."""
    from tqdm.auto import tqdm

    plans = (result.encoder, result.lm)
    created_parents: list[Path] = []
    temps: dict[str, Path] = {}
    placed: list[tuple[Path, Path | None]] = []  # (output, backup of the folder it replaced)
    committed = False
    bar = None
    try:
        card_license = read_source_card_license(result.source.path)
        bar = tqdm(total=sum(plan.total_size for plan in plans), unit="B", unit_scale=True, unit_divisor=1024,
                   desc="split", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        for plan in plans:
            parent = plan.out.resolve().parent
            missing_parents = [p for p in [parent, *parent.parents] if not p.exists()]
            parent.mkdir(parents=True, exist_ok=True)
            created_parents.extend(reversed(missing_parents))
            temps[plan.half] = _sibling(plan.out.resolve(), "split")
            temps[plan.half].mkdir()  # the umask's permissions, like any new folder (mkdtemp's are 0700)
        for plan in plans:
            bar.set_description(f"split {plan.half}")
            _write_repo(plan, temps[plan.half], result, card_license, bar.update)
        bar.close()
        with signals_held():  # both outputs change together: no signal lands between these renames
            for plan in plans:
                final = plan.out.resolve()
                backup = _sibling(final, "split-old") if final.exists() else None
                if backup is not None:
                    final.rename(backup)
                placed.append((final, backup))
                temps[plan.half].rename(final)
                del temps[plan.half]
            committed = True
        for _, backup in placed:
            if backup is not None:
                _remove(backup)
    except BaseException as e:
        if bar is not None:
            bar.close()
        for tmp in temps.values():
            _remove(tmp)
        if committed:  # interrupted while dropping the old folders: finish that
            for _, backup in placed:
                if backup is not None:
                    _remove(backup)
        else:
            for final, backup in reversed(placed):  # a rename failed half-way: put the old folders back
                _remove(final)
                if backup is not None:
                    backup.rename(final)
            for parent in reversed(created_parents):
                try:
                    parent.rmdir()
                except OSError:
                    pass
        if isinstance(e, Interrupted):
            e.outputs = "new" if committed else "old"
        raise
