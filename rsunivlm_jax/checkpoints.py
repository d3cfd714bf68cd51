"""Model checkpoints on disk: one `load` for every kind, one format check, atomic `save`.

    ckpt = rs.checkpoints.load(path)          # config, graphdef, params, tokenizer, generation config
    rs.checkpoints.save(out_dir, config, params, tokenizer_dir=path)

`load` classifies what it is given (`resolve`):

* a converted checkpoint: ``meta.json`` (format ``rsunivlm_jax.converted/1``) + ``params/`` (Orbax)
  + optional tokenizer files and ``generation_config.json``; written by `save` and by
  ``rsunivlm-convert``. A checkpoint of a bare Qwen2 or SigLIP model holds only those ``parts``;
  `assemble` fills the rest from the model's own initialiser;
* a training run: ``<run>/checkpoints/<step>/{params,meta}`` (`rsunivlm_jax.train.checkpoint`),
  the latest finished step unless `step` is given; tokenizer files are read from ``<run>``;
* one step directory of a run, or the run's ``checkpoints/`` directory itself.

Parameters are restored straight into the shardings of a mesh (no full host copy per device), or
onto one device without one. Every problem is a `CheckpointError` naming the file and the reason.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
from etils import epath

from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.tree import flatten, unflatten

META_FILE = "meta.json"
PARAMS_DIR = "params"
RUN_CHECKPOINTS = "checkpoints"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json",
                   "special_tokens_map.json")
GENERATION_CONFIG = "generation_config.json"
FORMAT = "rsunivlm_jax.converted/1"
PARTS = ("vision", "connector", "decoder", "lm_head")


class CheckpointError(ValueError):
    """A path that is not a usable checkpoint; the message names the file and the reason."""


@dataclass(frozen=True)
class Source:
    """What a checkpoint path holds (`resolve`), before any parameter is read."""

    kind: str                 # "converted" or "run"
    path: epath.Path          # as given (a local path or a URL Orbax reads, e.g. gs://)
    meta: dict
    config: ModelConfig
    parts: tuple[str, ...]
    files_dir: epath.Path     # tokenizer files and generation_config.json
    params_dir: epath.Path | None = None    # converted: the Orbax params directory
    manager_dir: epath.Path | None = None   # run: the Orbax CheckpointManager directory
    step: int | None = None                 # run: the step read


@dataclass
class Checkpoint:
    """A loaded checkpoint. `params` holds the parts listed in `parts` (all four for a full model)."""

    config: ModelConfig
    graphdef: Any
    params: dict
    tokenizer: Any  # rsunivlm_jax.data.tokenizer.Tokenizer, or None when the directory has no tokenizer
    generation_config: dict | None
    meta: dict
    parts: tuple[str, ...]
    path: epath.Path
    step: int | None = None


def _abs(path) -> epath.Path:
    return epath.Path(path if "://" in str(path) else os.path.abspath(path))


# --------------------------------------------------------------------------------------------
# What a path holds, and the one format check
# --------------------------------------------------------------------------------------------

def _read_json(path: epath.Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_meta(meta: Mapping, where: str, *, converted: bool) -> tuple[ModelConfig, tuple[str, ...]]:
    """The format check of every checkpoint: (model config, parts) of a meta, or a `CheckpointError`."""
    if converted and meta.get("format") != FORMAT:
        raise CheckpointError(f"{where}: format {meta.get('format')!r}, expected {FORMAT!r} (convert PyTorch "
                              "weights with `rsunivlm-convert --src ... --dst ...`)")
    model = meta.get("model_config")
    if not isinstance(model, dict):
        raise CheckpointError(f"{where}: no model_config object")
    try:
        config = ModelConfig.from_dict(model)
    except TypeError as e:  # "VisionConfig.__init__() got an unexpected keyword argument 'x'"
        m = re.match(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", str(e))
        reason = f"unknown {m.group(1)} field {m.group(2)!r}" if m else str(e)
        raise CheckpointError(f"{where}: model_config: {reason}") from e
    except ValueError as e:
        raise CheckpointError(f"{where}: model_config: {e}") from e
    parts = tuple(meta.get("parts", PARTS))
    unknown = [p for p in parts if p not in PARTS]
    if not parts or unknown:
        raise CheckpointError(f"{where}: parts {list(parts)}: expected a non-empty subset of {list(PARTS)}")
    return config, parts


@contextlib.contextmanager
def _manager(directory: epath.Path):
    """A read-only Orbax CheckpointManager (its notices about being read-only silenced)."""
    import orbax.checkpoint as ocp
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(max(level, logging.ERROR))
    try:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False)
        manager = ocp.CheckpointManager(_abs(directory), item_names=("params", "meta"), options=options)
    finally:
        absl_log.setLevel(level)
    with manager as m:
        yield m


def _run_source(path: epath.Path, manager_dir: epath.Path, step: int | None) -> Source:
    import orbax.checkpoint as ocp
    with _manager(manager_dir) as m:
        steps = list(m.all_steps())
        if not steps:
            raise CheckpointError(f"{path}: training run without a finished checkpoint")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise CheckpointError(f"{path}: no step {step} (steps: {sorted(steps)})")
        meta = dict(m.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    where = f"{manager_dir / str(step) / 'meta'}"
    config, _ = check_meta(meta, where, converted=False)
    files_dir = manager_dir.parent if manager_dir.name == RUN_CHECKPOINTS else manager_dir
    return Source("run", path, meta, config, PARTS, files_dir, manager_dir=manager_dir, step=step)


def resolve(path: str | os.PathLike, *, step: int | None = None) -> Source:
    """Classifies `path` (see the module docstring) and checks its format; reads no parameters."""
    path = epath.Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint (a file, expected a directory)")
    if (path / META_FILE).is_file():
        if step is not None:
            raise CheckpointError(f"{path}: a converted checkpoint has no steps (got step {step})")
        meta = _read_json(path / META_FILE)
        config, parts = check_meta(meta, str(path / META_FILE), converted=True)
        if not (path / PARAMS_DIR).is_dir():
            raise CheckpointError(f"{path}: no {PARAMS_DIR}/ directory next to {META_FILE}")
        return Source("converted", path, meta, config, parts, path, params_dir=path / PARAMS_DIR)
    if (path / RUN_CHECKPOINTS).is_dir():
        return _run_source(path, path / RUN_CHECKPOINTS, step)
    if path.name.isdigit() and (path / "params").is_dir():  # one step directory of a run
        if step is not None and step != int(path.name):
            raise CheckpointError(f"{path}: a step directory of step {path.name}, not {step}")
        return _run_source(path, path.parent, int(path.name))
    if any(p.name.isdigit() and (p / "params").is_dir() for p in path.iterdir()):  # a run's checkpoints/
        return _run_source(path, path, step)
    raise CheckpointError(f"{path}: not a checkpoint (expected {META_FILE} + {PARAMS_DIR}/ of a converted "
                          f"checkpoint, or {RUN_CHECKPOINTS}/<step>/ of a training run)")


def read_meta(path: str | os.PathLike, *, step: int | None = None) -> dict:
    """The checked meta of any checkpoint (meta.json, or a run step's meta)."""
    return resolve(path, step=step).meta


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def restore_params(directory: str | os.PathLike, abstract: dict) -> dict:
    """Restores an Orbax params directory into the shapes / dtypes / shardings of `abstract`."""
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(_abs(directory), abstract)


def _restore(src: Source, abstract: dict) -> dict:
    if src.kind == "converted":
        return restore_params(src.params_dir, abstract)
    import orbax.checkpoint as ocp
    with _manager(src.manager_dir) as m:
        args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract))
        return m.restore(src.step, args=args)["params"]


def _abstract(config: ModelConfig, parts, mesh, rules):
    from rsunivlm_jax.functional import abstract_init
    graphdef, abstract = abstract_init(config, mesh=mesh, rules=rules)
    if mesh is None:
        single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=single), abstract)
    return graphdef, {k: v for k, v in abstract.items() if k in parts}


def load_tokenizer(path: str | os.PathLike, image_token_id: int):
    """`rsunivlm_jax.data.tokenizer.Tokenizer` of a directory, or None when it has no tokenizer files."""
    d = Path(path)
    if not ((d / "tokenizer.json").is_file() or ((d / "vocab.json").is_file() and (d / "merges.txt").is_file())):
        return None
    from rsunivlm_jax.data.tokenizer import Tokenizer
    return Tokenizer.from_dir(d, image_token_id=image_token_id)


def load(path: str | os.PathLike, *, step: int | None = None, mesh=None, rules=None,
         dtype: str | None = None) -> Checkpoint:
    """Loads any checkpoint (see the module docstring); `rs.load_pretrained` is this function.

    `step`: the step of a training run (default: the latest). `mesh` / `rules`: restore each
    parameter directly into its sharding (rule preset name or mapping, as `rsunivlm_jax.sharding`);
    without a mesh everything lands on the first device. `dtype`: parameter dtype to restore into
    (default: as stored).
    """
    src = resolve(path, step=step)
    config = src.config if dtype is None else src.config.replace(param_dtype=dtype)
    graphdef, abstract = _abstract(config, src.parts, mesh, rules)
    params = _restore(src, abstract)
    gen_path = src.files_dir / GENERATION_CONFIG
    gen = _read_json(gen_path) if gen_path.is_file() else None
    tokenizer = load_tokenizer(src.files_dir, config.image_token_id)
    return Checkpoint(config, graphdef, params, tokenizer, gen, src.meta, src.parts, src.path, src.step)


def load_params(path: str | os.PathLike, abstract: dict, *, step: int | None = None) -> tuple[dict, dict]:
    """(params restored onto the shapes / shardings of `abstract`, meta) of any checkpoint that holds
    every part of `abstract` (how a trainer starts from a converted model or an earlier run)."""
    src = resolve(path, step=step)
    missing = sorted(set(abstract) - set(src.parts))
    if missing:
        raise CheckpointError(f"{path}: holds only {list(src.parts)}; the model also needs {missing}")
    return _restore(src, abstract), src.meta


# --------------------------------------------------------------------------------------------
# A full model from partial checkpoints
# --------------------------------------------------------------------------------------------

def _init_leaves(config: ModelConfig, abstract: Mapping[str, jax.ShapeDtypeStruct], rng: int) -> dict:
    """`rs.init(config)` restricted to the leaves of `abstract` (flat paths; XLA drops the others)."""
    if not abstract:
        return {}
    from rsunivlm_jax.functional import init

    def make(key):
        flat = flatten(init(config, key)[1])
        return {p: flat[p] for p in abstract}

    return jax.jit(make, out_shardings={p: a.sharding for p, a in abstract.items()})(jax.random.key(rng))


def assemble(config: ModelConfig, *checkpoints: Checkpoint, rng: int = 0, mesh=None, rules=None):
    """(graphdef, params) for `config`: the parts of each checkpoint, the rest from the model's own
    initialiser (`rs.init(config, rng)`, only the missing leaves computed).

    Shapes must match exactly. A tied decoder placed into an untied `config` also fills
    `lm_head/kernel` with the transposed embedding table (what the tied model computes).
    """
    graphdef, abstract = _abstract(config, PARTS, mesh, rules)
    flat_abstract = flatten(abstract)
    given: dict[str, Any] = {}
    problems = []
    for ck in checkpoints:
        for path, value in flatten(ck.params).items():
            if path not in flat_abstract:
                problems.append(f"{path}: not in the target model")
            elif tuple(flat_abstract[path].shape) != tuple(value.shape):
                problems.append(f"{path}: pretrained shape {tuple(value.shape)}, target "
                                f"{tuple(flat_abstract[path].shape)}")
            else:
                given[path] = value
        head = "lm_head/kernel"
        if "decoder" in ck.parts and "lm_head" not in ck.parts and head in flat_abstract and head not in given:
            emb = ck.params["decoder"]["embed_tokens"]["embedding"]
            if tuple(emb.shape[::-1]) == tuple(flat_abstract[head].shape):
                given[head] = emb.T
    if problems:
        raise CheckpointError("pretrained parts do not fit the model: " + "; ".join(problems))
    out = _init_leaves(config, {p: a for p, a in flat_abstract.items() if p not in given}, rng)
    for path, value in given.items():
        a = flat_abstract[path]
        out[path] = jax.device_put(jax.numpy.asarray(value, a.dtype), a.sharding)
    return graphdef, unflatten(out)


def to_numpy(params: dict) -> dict:
    return jax.tree.map(np.asarray, params)


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------

def save_params(directory: str | os.PathLike, params: dict) -> None:
    """Writes a params tree with Orbax `StandardCheckpointer` (`directory` must not exist)."""
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(Path(directory).absolute(), params)
        ckptr.wait_until_finished()


def check_destination(dst: str | os.PathLike) -> None:
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst}: destination exists and is not an empty directory; choose a new path")


def copy_side_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copies the tokenizer files and generation_config.json that `src` has; returns their names."""
    copied = []
    for name in TOKENIZER_FILES + (GENERATION_CONFIG,):
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


def write_atomically(dst: str | os.PathLike, fill: Callable[[Path], None]) -> None:
    """Runs `fill(tmp_dir)`, then renames tmp_dir to `dst` (absent or empty); on failure removes tmp_dir."""
    dst = Path(dst).absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        fill(tmp)
        if dst.exists():
            dst.rmdir()  # empty (checked before)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save(directory: str | os.PathLike, config: ModelConfig, params: dict, *,
         generation_config: Mapping | None = None, tokenizer_dir: str | os.PathLike | None = None,
         meta: Mapping | None = None) -> Path:
    """Writes a converted checkpoint that `load` reads: ``params/``, tokenizer files and
    ``generation_config.json`` (copied from `tokenizer_dir`, the latter replaced by
    `generation_config` when given), ``meta.json`` last (`meta`: extra fields). The directory is
    built under a temporary name and renamed when complete; it must not exist or be empty."""
    d = Path(directory)
    check_destination(d)
    record = {"format": FORMAT, "model_config": config.to_dict(), "parts": sorted(params),
              "source": {"writer": "rsunivlm_jax.checkpoints.save"}, **(meta or {})}

    def fill(tmp: Path) -> None:
        save_params(tmp / PARAMS_DIR, params)
        if tokenizer_dir is not None:
            copy_side_files(tokenizer_dir, tmp)
        if generation_config is not None:
            (tmp / GENERATION_CONFIG).write_text(json.dumps(dict(generation_config), indent=2), encoding="utf-8")
        (tmp / META_FILE).write_text(json.dumps(record, indent=2, default=list), encoding="utf-8")

    write_atomically(d, fill)
    return d
