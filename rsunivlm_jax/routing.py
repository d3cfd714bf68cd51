"""G-MoE routing, in one place: which expert a request uses, and how a batch runs its experts.

* `route(prompt)`: the training-free router of the reference demo: `[SEG]` -> 2 (pixel level),
  else `[VG]` / `[REF]` -> 1 (region level), else 0 (image level). It lives in the JAX-free
  `rsunivlm_jax.router` (data-loader workers import it) and is re-exported here.
* `moe_mlp(x, kernels, granularity, strategy)`: the SwiGLU experts of a decoder layer, each row
  through its own expert (the reference `Qwen2GMoEDecoderLayer` runs `self.mlp[granularity]`
  for a whole forward; here every row of a batch may differ, exactly).
* `expert_axes` / `take_expert` / `put_expert`: an expert's slice of any parameter tree (and
  of optimiser moments), found through the `expert` logical axis of the parameters.

Strategies for a batch whose rows may use different experts (all exact, gradients included;
an expert no row uses gets exactly zero gradient):

* ``auto`` (default): checks at run time whether all rows share one expert; if so, runs that
  expert alone (the cost of one dense MLP), otherwise the backend's mixed strategy: ``ragged``
  on GPU / TPU, on CPU ``gather`` for sequences of at least `GATHER_MIN_TOKENS` tokens per row
  and ``dense_mask`` for shorter ones (`python -m bench.routing` measures them).
* ``dense_mask``: every expert on every row, a one-hot mask keeps each row's own (E x FLOPs).
* ``ragged``: rows sorted by expert, one grouped matmul per projection (`jax.lax.ragged_dot`),
  rows restored to their order; the cost of one MLP where the backend has a grouped-GEMM kernel
  (XLA:CPU lowers it to a dense masked dot over all groups).
* ``gather``: each row's expert kernels gathered (`[B, D, F]`) and one batched matmul: the FLOPs
  of one MLP, plus a copy of the kernels per row (cheap against long rows, costly in decoding).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rsunivlm_jax.router import IMAGE_LEVEL, NUM_GRANULARITIES, PIXEL_LEVEL, REGION_LEVEL, route  # noqa: F401

STRATEGIES = ("auto", "dense_mask", "ragged", "gather")
GATHER_MIN_TOKENS = 64
EXPERT_AXIS_NAME = "expert"


class MixedBatchError(ValueError):
    """A batch whose rows use different experts reached a path that runs one expert per batch."""


def check_homogeneous(granularity, *, where: str = "this step") -> int:
    """The one expert of a host-side `granularity` array; `MixedBatchError` naming rows and experts
    when they differ."""
    g = np.asarray(granularity).reshape(-1)
    values = sorted(set(g.tolist()))
    if len(values) > 1:
        rows = {v: np.flatnonzero(g == v).tolist() for v in values}
        shown = "; ".join(f"expert {v}: rows {r[:8]}{' ...' if len(r) > 8 else ''}" for v, r in rows.items())
        raise MixedBatchError(f"{where} runs one expert per batch, but the batch mixes experts ({shown})")
    return int(values[0]) if values else 0


# ---- the expert MLP ---------------------------------------------------------------------------

def _swiglu(x, gate, up, down, spec: str = "bti,io->bto"):
    """`down(silu(gate(x)) * up(x))` with kernels `[in, out]` (`spec` batches them if needed)."""
    h = jax.nn.silu(jnp.einsum(spec, x, gate)) * jnp.einsum(spec, x, up)
    return jnp.einsum(spec, h, down)


def _one_expert(x, kernels, e):
    return _swiglu(x, *(jax.lax.dynamic_index_in_dim(w, e, 0, keepdims=False) for w in kernels))


def _dense_mask(x, kernels, g):
    gate, up, down = kernels
    h = jax.nn.silu(jnp.einsum("bti,eio->beto", x, gate)) * jnp.einsum("bti,eio->beto", x, up)
    y = jnp.einsum("beti,eio->beto", h, down)
    return jnp.einsum("betd,be->btd", y, jax.nn.one_hot(g, gate.shape[0], dtype=x.dtype))


def _gather(x, kernels, g):
    from rsunivlm_jax.sharding import constrain  # kernels gathered whole (as FSDP does), rows as x's

    gate, up, down = (constrain(jnp.take(constrain(w, (None, None, None)), g, axis=0), ("batch", None, None))
                      for w in kernels)  # [B, in, out]
    return _swiglu(x, gate, up, down, spec="bti,bio->bto")


def _ragged(x, kernels, g):
    b, t, d = x.shape
    e = kernels[0].shape[0]
    order = jnp.argsort(g, stable=True)
    sizes = (jnp.bincount(g, length=e) * t).astype(jnp.int32)
    xs = jnp.take(x, order, axis=0).reshape(b * t, d)
    gate, up, down = kernels
    h = jax.nn.silu(jax.lax.ragged_dot(xs, gate, sizes)) * jax.lax.ragged_dot(xs, up, sizes)
    y = jax.lax.ragged_dot(h, down, sizes).reshape(b, t, -1)
    return jnp.take(y, jnp.argsort(order), axis=0)


def mixed_strategy(tokens_per_row: int, backend: str | None = None) -> str:
    """The exact strategy `auto` uses for a mixed batch (rows of `tokens_per_row` tokens)."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "ragged"
    return "gather" if tokens_per_row >= GATHER_MIN_TOKENS else "dense_mask"


_MIXED = {"dense_mask": _dense_mask, "ragged": _ragged, "gather": _gather}


def moe_mlp(x: jax.Array, kernels: Sequence[jax.Array], granularity: jax.Array, strategy: str = "auto"):
    """Row b of `x [B, T, D]` through expert `granularity[b]` of `kernels` = (gate `[E, D, F]`,
    up `[E, D, F]`, down `[E, F, D]`). Exact for any batch, also with `granularity` traced."""
    if strategy not in STRATEGIES:
        raise ValueError(f"G-MoE strategy {strategy!r}; expected one of {STRATEGIES}")
    num_experts = kernels[0].shape[0]
    if num_experts == 1:
        return _swiglu(x, *(w[0] for w in kernels))
    g = jnp.clip(jnp.asarray(granularity, jnp.int32), 0, num_experts - 1)
    if strategy != "auto":
        return _MIXED[strategy](x, kernels, g)
    mixed = _MIXED[mixed_strategy(x.shape[1])]
    same = jnp.all(g == g[0])
    return jax.lax.cond(same, lambda: _one_expert(x, kernels, g[0]), lambda: mixed(x, kernels, g))


# ---- an expert's slice of a parameter tree ----------------------------------------------------

def expert_axes(graphdef, params) -> Any:
    """Tree like `params` (a pure dict of arrays or shapes for `graphdef`): the position of the
    `expert` logical axis in each parameter, -1 where it has none."""
    from flax import nnx

    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
    state = nnx.state(nnx.merge(graphdef, shapes))

    def axis(v):
        names = tuple(getattr(v, "logical_axes", None) or ())
        return names.index(EXPERT_AXIS_NAME) if EXPERT_AXIS_NAME in names else -1

    return nnx.to_pure_dict(jax.tree.map(axis, state, is_leaf=lambda v: isinstance(v, nnx.Variable)))


def take_expert(tree: Any, axes: Any, e) -> Any:
    """Expert `e`'s slice (kept as an axis of size 1) of every leaf with an expert axis."""
    return jax.tree.map(lambda x, ax: x if ax < 0 else jax.lax.dynamic_slice_in_dim(x, e, 1, axis=ax), tree, axes)


def put_expert(full: Any, part: Any, axes: Any, e) -> Any:
    """`full` with expert `e`'s slice replaced by `part` (the inverse of `take_expert`)."""
    return jax.tree.map(lambda f, p, ax: p if ax < 0 else jax.lax.dynamic_update_slice_in_dim(f, p, e, axis=ax),
                        full, part, axes)
