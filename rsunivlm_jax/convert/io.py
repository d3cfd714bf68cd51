"""Checkpoint files: lazy tensor reads (safetensors, sharded indexes, safe `.bin`), writes, hashes.

* safetensors are read with `safetensors.safe_open(framework="numpy")`: headers first (names,
  shapes, dtypes; no data), then one tensor at a time. bfloat16 arrives as `ml_dtypes.bfloat16`.
* `model.safetensors.index.json` / `pytorch_model.bin.index.json` name the shards.
* `pytorch_model*.bin` only through `torch.load(..., weights_only=True)` and only when torch is
  installed: a pickle that would build anything but tensors is refused before it runs.
* Every problem found while opening (missing shard, truncated file, refused pickle, ...) is
  collected and raised together as one `ConversionError`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import ml_dtypes
import numpy as np

from rsunivlm_jax.convert import ConversionError

SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_INDEX = "pytorch_model.bin.index.json"

# safetensors dtype tags -> numpy dtype names
_ST_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "I8": "int8",
              "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")


def np_dtype(name: str) -> np.dtype:
    """numpy dtype for a name, including ml_dtypes' bfloat16."""
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def sha256_file(path: str | os.PathLike, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorInfo:
    key: str
    file: Path
    shape: tuple[int, ...]
    dtype: str  # numpy name: "bfloat16", "float32", ...


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _safetensors_infos(path: Path) -> dict[str, TensorInfo]:
    from safetensors import safe_open
    out = {}
    with safe_open(str(path), framework="numpy") as f:
        for key in f.keys():
            s = f.get_slice(key)
            tag = s.get_dtype()
            out[key] = TensorInfo(key, path, tuple(int(d) for d in s.get_shape()), _ST_DTYPES.get(tag, tag.lower()))
    return out


def _torch_load(path: Path) -> dict:
    """`torch.load(weights_only=True)`; refuses pickles that would build anything but tensors."""
    import torch
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):  # legacy (non-zip) files cannot be memory-mapped
            raise
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict (mapping of names to tensors), found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"entries that are not tensors: {bad[:5]}")
    return obj


def _torch_to_numpy(t) -> np.ndarray:
    import torch
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


class TensorReader:
    """All tensors of a checkpoint directory, by name; data is read only on request."""

    def __init__(self, directory: Path, infos: dict[str, TensorInfo], files: list[Path], fmt: str,
                 index: Path | None, notes: list[str], torch_dicts: dict[Path, dict] | None = None):
        self.directory, self.infos, self.files, self.format = directory, infos, files, fmt
        self.index, self.notes = index, notes
        self._torch = torch_dicts or {}

    # ---- opening ----------------------------------------------------------------------

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "TensorReader":
        d = Path(directory)
        if not d.is_dir():
            raise ConversionError(f"{d}: source directory does not exist")
        problems: list[str] = []
        notes: list[str] = []
        index = None
        if (d / SAFETENSORS_INDEX).is_file():
            index, fmt = d / SAFETENSORS_INDEX, "safetensors"
        elif (d / TORCH_INDEX).is_file():
            index, fmt = d / TORCH_INDEX, "torch"
        if index is not None:
            weight_map = cls._read_index(index, problems)
            files = [d / name for name in sorted(set(weight_map.values()))]
            for f in files:
                if not f.is_file():
                    n = sum(1 for v in weight_map.values() if d / v == f)
                    problems.append(f"{index.name} names shard {f.name} ({n} tensors), which does not exist in {d}")
            files = [f for f in files if f.is_file()]
        else:
            weight_map = None
            files = sorted(d.glob("*.safetensors"))
            fmt = "safetensors"
            if not files:
                files = sorted(d.glob("*.bin"))
                fmt = "torch"
            if not files:
                problems.append(f"{d}: no weights found (expected model.safetensors, a sharded "
                                f"{SAFETENSORS_INDEX}, or pytorch_model*.bin)")
        if problems:
            raise ConversionError(problems, f"cannot read checkpoint {d}")
        if weight_map is None and len(files) > 1:
            notes.append(f"{len(files)} weight files without an index; reading all of them: "
                         f"{[f.name for f in files]}")
        if weight_map is not None:
            stray = sorted({p.name for p in d.glob("*.safetensors" if fmt == "safetensors" else "*.bin")}
                           - {f.name for f in files})
            if stray:
                notes.append(f"weight files not named by {index.name}, ignored: {stray}")

        infos: dict[str, TensorInfo] = {}
        torch_dicts: dict[Path, dict] = {}
        parsed: set[Path] = set()
        flagged: set[str] = set()
        if fmt == "torch":
            try:
                import torch  # noqa: F401
            except ImportError:
                raise ConversionError(
                    [f"{f.name}: PyTorch pickle checkpoints need torch (pip install 'rsunivlm_jax[convert]'); "
                     f"safetensors files need nothing extra" for f in files], f"cannot read checkpoint {d}")
        for f in files:
            try:
                if fmt == "safetensors":
                    file_infos = _safetensors_infos(f)
                else:
                    sd = _torch_load(f)
                    torch_dicts[f] = sd
                    file_infos = {k: TensorInfo(k, f, tuple(v.shape), str(v.dtype).removeprefix("torch."))
                                  for k, v in sd.items()}
            except Exception as e:  # noqa: BLE001 - reported with the file name
                refused = type(e).__name__ == "UnpicklingError" or "weights_only" in str(e) or "Weights only" in str(e)
                if fmt == "torch" and refused:
                    problems.append(f"{f.name}: refused: the pickle holds objects other than tensors and was not "
                                    f"executed (torch.load weights_only=True: {_first_line(e)})")
                elif fmt == "torch" and isinstance(e, ValueError):
                    problems.append(f"{f.name}: refused: {e}")
                elif fmt == "torch":
                    problems.append(f"{f.name}: not a readable PyTorch weights file ({_first_line(e)})")
                else:
                    problems.append(f"{f.name}: not a valid safetensors file (truncated or corrupt?): "
                                    f"{_first_line(e)}")
                continue
            parsed.add(f)
            for k, info in file_infos.items():
                flagged.add(k)
                if k in infos:
                    problems.append(f"tensor {k!r} appears in both {infos[k].file.name} and {f.name}")
                elif weight_map is not None and k not in weight_map:
                    problems.append(f"{f.name} holds tensor {k!r}, which {index.name} does not list")
                elif weight_map is not None and d / weight_map[k] != f:
                    problems.append(f"{index.name} maps {k!r} to {weight_map[k]}, but it is stored in {f.name}")
                else:
                    infos[k] = info
        if weight_map is not None:
            for k, name in weight_map.items():
                if d / name in parsed and k not in flagged:
                    problems.append(f"{index.name} maps {k!r} to {name}, which has no such tensor")
        if problems:
            raise ConversionError(problems, f"cannot read checkpoint {d}")
        return cls(d, infos, files, fmt, index, notes, torch_dicts)

    @staticmethod
    def _read_index(index: Path, problems: list[str]) -> dict[str, str]:
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            weight_map = data["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ValueError("weight_map must map tensor names to file names")
        except Exception as e:  # noqa: BLE001
            problems.append(f"{index.name}: unreadable index ({_first_line(e)})")
            return {}
        for name in set(weight_map.values()):
            if Path(name).name != name:
                problems.append(f"{index.name}: shard name {name!r} is not a plain file name in the directory")
        return {k: v for k, v in weight_map.items() if Path(v).name == v}

    # ---- reading ----------------------------------------------------------------------

    def keys(self) -> list[str]:
        return sorted(self.infos)

    def __contains__(self, key: str) -> bool:
        return key in self.infos

    @contextlib.contextmanager
    def session(self) -> Iterator[Callable[[str], np.ndarray]]:
        """Yields `read(key) -> np.ndarray`; files opened inside are closed (unmapped) on exit."""
        from safetensors import safe_open
        handles = {}

        def read(key: str) -> np.ndarray:
            info = self.infos[key]
            if self.format == "torch":
                return _torch_to_numpy(self._torch[info.file][key])
            if info.file not in handles:
                handles[info.file] = safe_open(str(info.file), framework="numpy")
            return handles[info.file].get_tensor(key)

        try:
            yield read
        finally:
            handles.clear()

    def read(self, key: str) -> np.ndarray:
        with self.session() as read:
            return read(key)

    def dtypes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for info in self.infos.values():
            out[info.dtype] = out.get(info.dtype, 0) + 1
        return out

    def describe_files(self, with_hash: bool = True) -> list[dict]:
        listed = list(self.files) + ([self.index] if self.index is not None else [])
        return [{"name": f.name, "bytes": f.stat().st_size, **({"sha256": sha256_file(f)} if with_hash else {})}
                for f in listed]


# ---- writing ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PendingTensor:
    """A tensor to write: its name, size in bytes, and a function that materialises it."""

    key: str
    nbytes: int
    make: Callable[[], np.ndarray]


def plan_shards(tensors: Sequence[PendingTensor], max_shard_bytes: int) -> list[list[PendingTensor]]:
    shards: list[list[PendingTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def save_safetensors(directory: Path, tensors: Iterable[PendingTensor], max_shard_bytes: int = 2 << 30,
                     progress: Callable[[Iterable], Iterable] | None = None) -> list[str]:
    """Writes `model.safetensors` or `model-0000i-of-0000n.safetensors` + index; one shard in memory."""
    from safetensors.numpy import save_file
    tensors = list(tensors)
    shards = plan_shards(tensors, max_shard_bytes)
    n = len(shards)
    names = (["model.safetensors"] if n == 1 else
             [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
    weight_map = {}
    for name, shard in zip(names, progress(shards) if progress else shards):
        arrays = {t.key: np.ascontiguousarray(t.make()) for t in shard}
        save_file(arrays, str(directory / name), metadata={"format": "pt"})
        weight_map.update({t.key: name for t in shard})
        del arrays
    if n > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
        (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2), encoding="utf-8")
    return names + ([SAFETENSORS_INDEX] if n > 1 else [])
