"""Streaming safetensors reading and writing, one bounded chunk at a time.

The split never materialises a whole shard (not even through mmap): it parses the JSON header
itself, reads each tensor with plain `read()` calls in row chunks along dim 0 (at most
`CHUNK_BYTES` at a time, one expert matrix when experts are transposed) and writes the output
shard the same way behind a header computed up front. Peak memory is therefore a few chunks,
whatever the shard size.

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N,
N bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`,
then the data buffer; offsets are relative to the buffer and must tile it exactly.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import torch

CHUNK_BYTES = 4 * 1024 * 1024
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors reference implementation's own limit

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file that is missing, truncated or malformed."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offset of the data in `file`
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def read_header(file: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header without reading any tensor data.

    Raises `SafetensorsError` for a missing file, a truncated file (data shorter than the header
    says), a malformed entry (dtype, shape, offsets) or overlapping/holed offsets.
    """
    file = Path(file)
    if not file.is_file():
        raise SafetensorsError(f"safetensors file not found: {file}")
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsError(f"{file} is not a valid safetensors file: {size} bytes, shorter than its 8-byte header length (truncated?)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise SafetensorsError(
                f"{file} is truncated or not a safetensors file: header length {n} does not fit in {size} bytes"
            )
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{file} is not a valid safetensors file: unreadable JSON header ({e})") from e
    if not isinstance(header, dict):
        raise SafetensorsError(f"{file} is not a valid safetensors file: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{file} is not a valid safetensors file: __metadata__ must map strings to strings")
    base = 8 + n
    infos: dict[str, TensorInfo] = {}
    spans = []
    for name, entry in header.items():
        dtype, shape, (begin, end) = _header_entry(file, name, entry)
        expected = math.prod(shape) * element_size(dtype)
        if end - begin != expected or begin < 0:
            raise SafetensorsError(f"{file}: tensor {name!r} has offsets {begin}..{end} but needs {expected} bytes")
        infos[name] = TensorInfo(name, file, dtype, shape, base + begin, base + end)
        spans.append((begin, end, name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            raise SafetensorsError(f"{file}: tensor data is not contiguous at {name!r} (offset {begin}, expected {position})")
        position = end
    if base + position != size:
        if base + position > size:
            raise SafetensorsError(
                f"{file} is truncated: its header describes {base + position} bytes but the file has {size} "
                f"(incomplete download or copy?)"
            )
        raise SafetensorsError(f"{file}: {size - base - position} trailing bytes after the tensor data")
    return infos, metadata


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _header_entry(file: Path, name: str, entry) -> tuple[torch.dtype, tuple[int, ...], tuple[int, int]]:
    """(dtype, shape, data offsets) of one header entry, each checked for type and range."""
    def bad(what: str) -> SafetensorsError:
        return SafetensorsError(f"{file} is not a valid safetensors file: tensor {name!r} {what}")

    if not isinstance(entry, dict):
        raise bad(f"has header entry {entry!r}; expected an object with dtype, shape and data_offsets")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise bad(f"has dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise bad(f"has shape {shape!r}; expected a list of non-negative integers")
    offsets = entry.get("data_offsets")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise bad(f"has data_offsets {offsets!r}; expected [begin, end], two non-negative integers")
    return DTYPES[dtype], tuple(shape), (offsets[0], offsets[1])


def _read_exact(f: BinaryIO, n: int, file: Path) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            raise SafetensorsError(f"{file} is truncated: unexpected end of file while reading tensor data")
        got += k
    return buf


def iter_tensor_chunks(
    info: TensorInfo,
    f: BinaryIO,
    *,
    transpose_12: bool = False,
    dtype: torch.dtype | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the tensor in contiguous row chunks along dim 0 (each already transposed/cast).

    `transpose_12` swaps dims 1 and 2 of a 3-D tensor (fused experts); the chunks concatenated
    along dim 0 are then exactly `tensor.transpose(1, 2).contiguous().to(dtype)`.
    """
    shape = info.shape
    out_dtype = dtype or info.dtype
    if len(shape) == 0 or shape[0] == 0 or math.prod(shape) == 0:
        f.seek(info.begin)
        buf = _read_exact(f, info.nbytes, info.file)
        t = torch.frombuffer(buf, dtype=info.dtype).reshape(shape) if info.nbytes else torch.empty(shape, dtype=info.dtype)
        yield t.to(out_dtype)
        return
    row_bytes = info.nbytes // shape[0]
    rows = max(1, CHUNK_BYTES // max(1, row_bytes))
    f.seek(info.begin)
    for start in range(0, shape[0], rows):
        n = min(rows, shape[0] - start)
        buf = _read_exact(f, n * row_bytes, info.file)
        t = torch.frombuffer(buf, dtype=info.dtype).reshape((n, *shape[1:]))
        if transpose_12:
            t = t.transpose(1, 2)
        if t.dtype != out_dtype:
            t = t.to(out_dtype)
        yield t.contiguous()
        del buf, t


@dataclass
class PlannedTensor:
    """One tensor of an output shard: where it comes from and what it becomes."""

    name: str  # output key
    source: TensorInfo
    dtype: torch.dtype  # output dtype
    shape: tuple[int, ...]  # output shape
    transpose_12: bool = False

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * element_size(self.dtype)


def shard_header(tensors: list[PlannedTensor], metadata: dict[str, str] | None = None) -> bytes:
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # align the data buffer to 8 bytes, as the reference writer does
    return struct.pack("<Q", len(raw)) + raw


def write_shard(
    path: str | Path,
    tensors: list[PlannedTensor],
    *,
    metadata: dict[str, str] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Stream `tensors` from their source files into one safetensors file; returns bytes written."""
    open_files: dict[Path, BinaryIO] = {}
    written = 0
    try:
        with open(path, "wb") as out:
            out.write(shard_header(tensors, metadata))
            for t in tensors:
                src = open_files.get(t.source.file)
                if src is None:
                    # one source file open at a time: tensors are planned in source order
                    for other in open_files.values():
                        other.close()
                    open_files.clear()
                    src = open_files[t.source.file] = open(t.source.file, "rb")
                n = 0
                for chunk in iter_tensor_chunks(t.source, src, transpose_12=t.transpose_12, dtype=t.dtype):
                    data = chunk.reshape(-1).view(torch.uint8).numpy()
                    out.write(data)
                    n += data.nbytes
                    if on_bytes is not None:
                        on_bytes(data.nbytes)
                    del chunk, data  # at most one chunk alive while the next one is read
                if n != t.nbytes:
                    raise SafetensorsError(f"internal error: wrote {n} bytes for {t.name}, expected {t.nbytes}")
                written += n
            out.flush()
            os.fsync(out.fileno())
    finally:
        for f in open_files.values():
            f.close()
    return written
