"""A view of a sharded checkpoint that holds only the shards one half needs.

Hub remote code (imports only transformers). transformers resolves (and downloads) every shard an
index lists; for a full Qwen3-VL-MoE checkpoint the encoder needs only the few shards holding
`model.visual.*` and the language model all but those. The view is a temporary folder of
symlinks to the needed shards plus an index restricted to them, so neither half downloads, opens
nor reads the other half's shards. Tensors of the other half inside a shared shard are still
never read (safetensors is lazy).

Loading never leaves a parameter at its random initial value: when the checkpoint has no tensor
for one of the model's own parameters (transformers' `missing_keys`), `from_pretrained` raises
`MissingWeightsError` naming them instead of returning a model that would generate garbage.
"""

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers.utils.hub import cached_file

INDEX_FILE = "model.safetensors.index.json"
SIDE_FILES = ("config.json", "generation_config.json")
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
LOCAL_PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


class MissingWeightsError(ValueError):
    """The checkpoint lacks tensors for some of the model's parameters."""


def read_weight_map(index_file: str | os.PathLike) -> dict[str, str]:
    """`weight_map` of a safetensors index, checked: tensor name -> plain shard file name."""
    try:
        index = json.loads(Path(index_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{index_file} is not a readable safetensors index: {e}") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index_file} is not a valid safetensors index: expected an object with a "
                         f"'weight_map' object (tensor name -> shard file), got {type(weight_map).__name__}")
    for key, file in weight_map.items():
        if not isinstance(file, str) or not file.endswith(".safetensors") or os.path.basename(file) != file:
            raise ValueError(f"{index_file}: weight_map maps {key!r} to {file!r}; expected a shard file name "
                             "like 'model-00001-of-00002.safetensors' in the same folder")
    return weight_map


@contextmanager
def own_shards_view(source: str | os.PathLike, wants_key: Callable[[str], bool], **kwargs) -> Iterator[str | None]:
    """Yield a folder with only the shards holding keys for which `wants_key` is true, or None
    when there is nothing to leave out (single file, or every shard needed)."""
    hub_kwargs = {k: v for k, v in kwargs.items() if k in HUB_KWARGS and v is not None}
    index_file = _resolve(source, INDEX_FILE, hub_kwargs)
    if index_file is None:
        yield None
        return
    weight_map = read_weight_map(index_file)
    needed = sorted({file for key, file in weight_map.items() if wants_key(key)})
    if len(needed) == len(set(weight_map.values())):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="hf_qwen3_deepstack-view-") as view:
        for name in [*needed, *SIDE_FILES]:
            resolved = _resolve(source, name, hub_kwargs)
            if resolved is None and name in needed:
                raise FileNotFoundError(f"Shard {name} listed in {INDEX_FILE} of {source} was not found.")
            if resolved is not None:
                os.symlink(os.path.abspath(resolved), os.path.join(view, name))
        kept = {key: file for key, file in weight_map.items() if file in needed}
        Path(view, INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": kept}))
        yield view


def _resolve(source, name: str, hub_kwargs: dict) -> str | None:
    if os.path.isdir(source):
        subfolder = hub_kwargs.get("subfolder") or ""
        path = os.path.join(source, subfolder, name)
        return path if os.path.isfile(path) else None
    return cached_file(
        str(source), name, _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False, **hub_kwargs,
    )


class LoadsOwnShards:
    """`from_pretrained` that hands transformers a view with only this half's shards."""

    @staticmethod
    def is_own_key(key: str) -> bool:
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        source = str(pretrained_model_name_or_path)
        if source.startswith(LOCAL_PATH_PREFIXES) and not os.path.exists(os.path.expanduser(source)):
            raise FileNotFoundError(f"checkpoint folder {source} does not exist")
        wants_info = kwargs.pop("output_loading_info", False)
        with own_shards_view(pretrained_model_name_or_path, cls.is_own_key, **kwargs) as view:
            if view is not None:
                kwargs.pop("subfolder", None)
            model, info = super().from_pretrained(view or pretrained_model_name_or_path, *args,
                                                  output_loading_info=True, **kwargs)
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise MissingWeightsError(
                f"{source} has no tensor for {len(missing)} parameter(s) of {cls.__name__}: "
                f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}. They would keep random values, "
                "so loading stops here: check that the checkpoint is complete and is a checkpoint of this model."
            )
        model.config._name_or_path = source
        return (model, info) if wants_info else model
