"""The pure-functional API: every entry point takes `(graphdef, params, ...)`.

`params` is a plain nested dict of arrays (`nnx.to_pure_dict`) whose paths mirror the Hugging
Face module names (`decoder/layers/self_attn/q_proj/kernel`, stacked over layers and experts).
This is the only module that calls `nnx.split` / `nnx.merge`.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from rsunivlm_jax import sharding as shd
from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.models.rsunivlm import RSUniVLM

Params = dict[str, Any]


def _key(rng) -> jax.Array:
    return jax.random.key(rng) if isinstance(rng, int) else rng


@functools.lru_cache(maxsize=32)
def abstract_model(config: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, abstract state with logical-axes metadata); allocates nothing. Cached per config."""
    model = nnx.eval_shape(lambda: RSUniVLM(config, nnx.Rngs(0)))
    return nnx.split(model)


@functools.lru_cache(maxsize=32)
def _init_fn(config: ModelConfig, mesh: Mesh | None, rules_key: tuple | None):
    """Jitted initialiser, cached per (config, mesh, rules) so repeated `init` calls skip tracing."""
    def make(key):
        return nnx.to_pure_dict(nnx.state(RSUniVLM(config, nnx.Rngs(params=key))))

    if mesh is None:
        return jax.jit(make)
    _, state = abstract_model(config)
    return jax.jit(make, out_shardings=shd.param_shardings(state, mesh, dict(rules_key)))


def abstract_init(config: ModelConfig, *, mesh: Mesh | None = None, rules=None) -> tuple[nnx.GraphDef, Params]:
    """(graphdef, params of `jax.ShapeDtypeStruct`s, with shardings when a mesh is given)."""
    graphdef, state = abstract_model(config)
    params = nnx.to_pure_dict(state)
    if mesh is not None:
        shardings = shd.param_shardings(state, mesh, shd.get_rules(rules))
        params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params, shardings)
    return graphdef, params


def init(config: ModelConfig, rng: int | jax.Array = 0, *, mesh: Mesh | None = None,
         rules=None) -> tuple[nnx.GraphDef, Params]:
    """Random initialisation -> (graphdef, params). With a mesh, params are created sharded."""
    graphdef, _ = abstract_model(config)
    rules_key = None if mesh is None else tuple(sorted(shd.get_rules(rules).items()))
    return graphdef, _init_fn(config, mesh, rules_key)(_key(rng))


def param_count(config: ModelConfig) -> int:
    """Number of parameters, from `jax.eval_shape` (no allocation)."""
    _, params = abstract_init(config)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def param_specs(config: ModelConfig, rules=None) -> Params:
    """PartitionSpec of every parameter under a rule preset."""
    _, state = abstract_model(config)
    return shd.param_specs(state, shd.get_rules(rules))


def merge(graphdef: nnx.GraphDef, params: Params) -> RSUniVLM:
    """Rebuilds the module (use inside jitted functions)."""
    return nnx.merge(graphdef, params)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("output",))
def forward(graphdef: nnx.GraphDef, params: Params, input_ids: jax.Array, pixel_values: jax.Array | None,
            granularity: jax.Array, attention_mask: jax.Array | None = None, *,
            output: str = "expanded") -> jax.Array:
    """Logits for `input_ids [B, T]` with one `image_token_id` per image of `pixel_values [B, N, S, S, 3]`.

    `granularity int32[B]` picks the expert per example; `output="expanded"` -> `[B, L, V]`
    over the expanded sequence, `output="text"` -> `[B, T, V]` at each text token.
    """
    model = merge(graphdef, params)
    return model(input_ids, pixel_values, jnp.asarray(granularity, jnp.int32), attention_mask, output=output)


@functools.partial(jax.jit, static_argnums=(0,))
def encode_images(graphdef: nnx.GraphDef, params: Params, pixel_values: jax.Array) -> jax.Array:
    """`[B, N, S, S, 3]` -> `[B, N, P, D]` image embeddings (vision tower + connector + newline)."""
    return merge(graphdef, params).encode_images(pixel_values)


@functools.partial(jax.jit, static_argnums=(0,))
def vision_features(graphdef: nnx.GraphDef, params: Params, pixels: jax.Array) -> jax.Array:
    """`[B, S, S, 3]` -> SigLIP features `[B, N, Dv]` (the configured number of blocks)."""
    return merge(graphdef, params).vision(pixels)


def apply_sharded(fn, mesh: Mesh, rules=None):
    """Wraps `fn` so it traces under `use_sharding(mesh, rules)` (activation constraints active)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with shd.use_sharding(mesh, rules):
            return fn(*args, **kwargs)
    return wrapped
