"""Parameter creation with logical axis names, and the Linear layer.

Every parameter is an `nnx.Param` carrying `logical_axes` metadata (one name per dimension);
`rsunivlm_jax.sharding` resolves those names against a rule preset and a mesh. Layers stacked
for `lax.scan` get a leading `stack` shape and the `"layers"` axis name.

Glossary: D = input features, F = output features, L = stacked layers.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]


def dtype_of(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def make_param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int], axes: Sequence[str | None],
               *, stack: tuple[int, ...] = (), param_dtype: str = "float32") -> nnx.Param:
    """Creates a parameter of shape `stack + shape` with logical axes `("layers",)*len(stack) + axes`."""
    if len(shape) != len(axes):
        raise ValueError(f"shape {tuple(shape)} and axes {tuple(axes)} differ in rank")
    full_shape = tuple(stack) + tuple(shape)
    value = init(rngs.params(), full_shape, dtype_of(param_dtype))
    return nnx.Param(value, logical_axes=("layers",) * len(stack) + tuple(axes))


def normal(stddev: float = 0.02) -> Initializer:
    return jax.nn.initializers.normal(stddev)


zeros = jax.nn.initializers.zeros
ones = jax.nn.initializers.ones


class Linear(nnx.Module):
    """y = x @ kernel + bias (torch `nn.Linear` with weight transposed to `[in, out]`).

    `lora`: an adapter attached by `rsunivlm_jax.lora.adapters` (None otherwise); its `delta(x)`
    is added to the output, as peft's `LoraLayer` adds `lora_B(lora_A(dropout(x))) * scaling`.
    `kernel_transposed` (static; False as built, trained and saved): the kernel is stored `[out, in]`,
    as torch stores it. Only `rsunivlm_jax.inference.generate`'s decode copy sets it: XLA:CPU's
    one-row GEMV reads that layout ~1.25x faster (docs/profiling.md)."""

    lora = None
    kernel_transposed = False

    def __init__(self, in_features: int, out_features: int, *, axes: tuple[str | None, str | None],
                 use_bias: bool = True, rngs: nnx.Rngs, stack: tuple[int, ...] = (),
                 param_dtype: str = "float32", dtype: str = "float32", init_std: float = 0.02):
        self.kernel = make_param(rngs, normal(init_std), (in_features, out_features), axes,
                                 stack=stack, param_dtype=param_dtype)
        self.bias = (make_param(rngs, zeros, (out_features,), (axes[1],), stack=stack, param_dtype=param_dtype)
                     if use_bias else None)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = dtype_of(self.dtype)
        spec = "...d,fd->...f" if self.kernel_transposed else "...d,df->...f"
        y = jnp.einsum(spec, x.astype(dtype), self.kernel[...].astype(dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        if self.lora is not None:
            y = y + self.lora.delta(x.astype(dtype)).astype(dtype)
        return y
