"""Apply a stack of identical layers (parameters stacked on axis 0) with `jax.lax.scan`.

The stacked module is split into (graphdef, state); the scan body merges one layer's slice,
so parameters are traced once per stack instead of once per layer. Remat policies by name.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

REMAT = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # also keeps the batched dots (attention logits and outputs): more memory, fewer recomputations
    "dots_all": jax.checkpoint_policies.dots_saveable,
}


def scan_layers(stack: nnx.Module, body: Callable[[nnx.Module, Any, Any], tuple[Any, Any]], carry: Any,
                xs: Any = None, *, num_layers: int | None = None, remat_policy: str = "none") -> tuple[Any, Any]:
    """Runs `carry, y = body(layer, carry, x)` over the first `num_layers` layers of `stack`."""
    graphdef, state = nnx.split(stack)
    if num_layers is not None:
        state = jax.tree.map(lambda a: a[:num_layers], state)

    def step(c, inputs):
        layer_state, x = inputs
        return body(nnx.merge(graphdef, layer_state), c, x)

    if remat_policy != "none":
        step = jax.checkpoint(step, policy=REMAT[remat_policy], prevent_cse=False)
    return jax.lax.scan(step, carry, (state, xs))
