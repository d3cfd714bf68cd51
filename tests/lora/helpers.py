"""Shared pieces of the LoRA tests."""
from __future__ import annotations

import jax
import numpy as np

from rsunivlm_jax.lora import adapters as AD
from rsunivlm_jax.tree import flatten, unflatten


def random_adapters(cfg, lora, seed: int = 0, scale: float = 0.2) -> dict:
    """numpy adapters of the model's shapes with a non-zero B (a fresh adapter changes nothing)."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, a in flatten(AD.abstract_init(cfg, lora)).items():
        if path.endswith("lora_a"):
            bound = a.shape[-2] ** -0.5
            out[path] = rng.uniform(-bound, bound, a.shape).astype(np.float32)
        else:
            out[path] = (scale * rng.standard_normal(a.shape)).astype(np.float32)
    return unflatten(out)


def flat_numpy(tree) -> dict:
    """`a/b/c` path -> numpy array of every leaf (dicts, dataclasses and optax states alike)."""
    from rsunivlm_jax.train.optim import path_str
    return {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}
