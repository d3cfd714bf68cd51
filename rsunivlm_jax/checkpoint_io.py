"""Converted checkpoints on disk: `<dir>/params` (Orbax) + `<dir>/meta.json` + tokenizer files.

Written by `rsunivlm_jax.convert` (`rsunivlm-convert`); read here. `load_pretrained` restores the
parameters straight into the shardings of a mesh (no full host copy per device), or onto one
device when no mesh is given. A checkpoint converted from a bare Qwen2 or SigLIP model holds only
those parts (`parts` in meta.json); `assemble` builds a full parameter tree from such parts plus a
random initialisation of the rest.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.tree import unflatten

META_FILE = "meta.json"
PARAMS_DIR = "params"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json",
                   "special_tokens_map.json")
GENERATION_CONFIG = "generation_config.json"
FORMAT = "rsunivlm_jax.converted/1"


@dataclass
class Pretrained:
    """A loaded checkpoint. `params` holds the parts listed in `parts` (all four for a full model)."""

    config: ModelConfig
    graphdef: Any
    params: dict
    tokenizer: Any  # rsunivlm_jax.data.tokenizer.Tokenizer, or None when the directory has no tokenizer
    generation_config: dict | None
    meta: dict
    parts: tuple[str, ...]
    path: Path


def read_meta(path: str | os.PathLike) -> dict:
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path}: no {META_FILE}; not a converted rsunivlm_jax checkpoint "
                                f"(convert PyTorch weights with `rsunivlm-convert --src ... --dst ...`)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def save_params(directory: str | os.PathLike, params: dict) -> None:
    """Writes a params tree with Orbax `StandardCheckpointer` (`directory` must not exist)."""
    import orbax.checkpoint as ocp
    ckptr = ocp.StandardCheckpointer()
    try:
        ckptr.save(Path(directory).absolute(), params)
        ckptr.wait_until_finished()
    finally:
        ckptr.close()


def restore_params(directory: str | os.PathLike, abstract: dict) -> dict:
    """Restores into the shapes / dtypes / shardings of `abstract` (a tree of ShapeDtypeStruct)."""
    import orbax.checkpoint as ocp
    ckptr = ocp.StandardCheckpointer()
    try:
        return ckptr.restore(Path(directory).absolute(), abstract)
    finally:
        ckptr.close()


def _subtree(tree: dict, parts) -> dict:
    return {k: v for k, v in tree.items() if k in parts}


def _abstract(config: ModelConfig, parts, mesh, rules):
    from rsunivlm_jax.functional import abstract_init
    graphdef, abstract = abstract_init(config, mesh=mesh, rules=rules)
    if mesh is None:
        single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=single), abstract)
    return graphdef, _subtree(abstract, parts)


def load_tokenizer(path: str | os.PathLike, image_token_id: int):
    """`rsunivlm_jax.data.tokenizer.Tokenizer` of a directory, or None when it has no tokenizer files."""
    d = Path(path)
    if not ((d / "tokenizer.json").is_file() or ((d / "vocab.json").is_file() and (d / "merges.txt").is_file())):
        return None
    from rsunivlm_jax.data.tokenizer import Tokenizer
    return Tokenizer.from_dir(d, image_token_id=image_token_id)


def load_pretrained(path: str | os.PathLike, *, mesh=None, rules=None, dtype: str | None = None) -> Pretrained:
    """Loads a converted checkpoint directory.

    `mesh` / `rules`: restore each parameter directly into its sharding (rule preset name or
    mapping, as `rsunivlm_jax.sharding`); without a mesh everything lands on the first device.
    `dtype`: parameter dtype to restore into (default: as stored).
    """
    path = Path(path)
    meta = read_meta(path)
    config = ModelConfig.from_dict(meta["model_config"])
    if dtype is not None:
        config = config.replace(param_dtype=dtype)
    parts = tuple(meta["parts"])
    graphdef, abstract = _abstract(config, parts, mesh, rules)
    params = restore_params(path / PARAMS_DIR, abstract)
    gen_path = path / GENERATION_CONFIG
    gen = json.loads(gen_path.read_text(encoding="utf-8")) if gen_path.is_file() else None
    tokenizer = load_tokenizer(path, config.image_token_id)
    return Pretrained(config, graphdef, params, tokenizer, gen, meta, parts, path)


def _random_leaf(path: str, shape, dtype, rng: np.random.Generator) -> np.ndarray:
    """The model's initialisers (layers/common.py), in numpy: ones for norm scales, zeros for biases,
    N(0, 1/sqrt(D)) for image_newline, N(0, 0.02) for every other weight."""
    name = path.rsplit("/", 1)[-1]
    if name == "scale":
        x = np.ones(shape, np.float32)
    elif name == "bias":
        x = np.zeros(shape, np.float32)
    else:
        std = shape[-1] ** -0.5 if name == "image_newline" else 0.02
        x = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    return x.astype(dtype)


def assemble(config: ModelConfig, *pretrained: Pretrained, rng: int = 0, mesh=None, rules=None):
    """(graphdef, params) for `config`: the parts of each `pretrained`, the rest randomly initialised.

    Shapes must match exactly. A tied decoder placed into an untied `config` also fills
    `lm_head/kernel` with the transposed embedding table (what the tied model computes). The
    random leaves use the model's initialisers drawn with numpy (no compile of `rs.init`).
    """
    graphdef, abstract = _abstract(config, ("vision", "connector", "decoder", "lm_head"), mesh, rules)
    given: dict[str, Any] = {}
    problems = []

    def walk(tree: dict, prefix: str = ""):
        for k, v in tree.items():
            if isinstance(v, dict):
                yield from walk(v, f"{prefix}{k}/")
            else:
                yield prefix + k, v

    flat_abstract = dict(walk(abstract))
    for pre in pretrained:
        for path, value in walk(pre.params):
            if path not in flat_abstract:
                problems.append(f"{path}: not in the target model")
            elif tuple(flat_abstract[path].shape) != tuple(value.shape):
                problems.append(f"{path}: pretrained shape {tuple(value.shape)}, target "
                                f"{tuple(flat_abstract[path].shape)}")
            else:
                given[path] = value
        head = "lm_head/kernel"
        if "decoder" in pre.parts and "lm_head" not in pre.parts and head in flat_abstract and head not in given:
            emb = pre.params["decoder"]["embed_tokens"]["embedding"]
            if tuple(emb.shape[::-1]) == tuple(flat_abstract[head].shape):
                given[head] = emb.T
    if problems:
        raise ValueError("pretrained parts do not fit the model:\n  " + "\n  ".join(problems))
    np_rng = np.random.default_rng(rng)
    out = {}
    for path, a in flat_abstract.items():
        value = given[path] if path in given else _random_leaf(path, a.shape, a.dtype, np_rng)
        out[path] = jax.device_put(jax.numpy.asarray(value, a.dtype), a.sharding)
    return graphdef, unflatten(out)


def to_numpy(params: dict) -> dict:
    return jax.tree.map(np.asarray, params)
