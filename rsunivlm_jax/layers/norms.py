"""Normalisation layers, computed in float32 and cast back to the input dtype."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rsunivlm_jax.layers.common import make_param, ones, zeros


class RMSNorm(nnx.Module):
    """Qwen2 RMSNorm (transformers `Qwen2RMSNorm`): x / rms(x) in f32, times the weight."""

    def __init__(self, dim: int, *, eps: float, rngs: nnx.Rngs, stack: tuple[int, ...] = (),
                 param_dtype: str = "float32"):
        self.scale = make_param(rngs, ones, (dim,), ("norm",), stack=stack, param_dtype=param_dtype)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        # transformers multiplies the weight after casting back: weight * x.to(input_dtype)
        return self.scale[...].astype(jnp.float32) * x.astype(dtype).astype(jnp.float32)


class LayerNorm(nnx.Module):
    """SigLIP LayerNorm (torch `nn.LayerNorm`), statistics in float32."""

    def __init__(self, dim: int, *, eps: float, rngs: nnx.Rngs, stack: tuple[int, ...] = (),
                 param_dtype: str = "float32"):
        self.scale = make_param(rngs, ones, (dim,), ("norm",), stack=stack, param_dtype=param_dtype)
        self.bias = make_param(rngs, zeros, (dim,), ("norm",), stack=stack, param_dtype=param_dtype)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(dtype)
