"""Feed-forward blocks: SigLIP GELU MLP and the G-MoE stack of SwiGLU experts.

Glossary: B batch, T sequence, D width, F hidden, E experts; in the G-MoE einsums i / o are a
kernel's input / output axis (D or F), whichever order the kernel is stored in.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rsunivlm_jax.layers.common import Linear, dtype_of, make_param, normal

ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
}


class GeluMLP(nnx.Module):
    """fc1 -> GELU -> fc2 (transformers `SiglipMLP`)."""

    def __init__(self, dim: int, hidden: int, *, act: str, axes: tuple[str, str], rngs: nnx.Rngs,
                 stack: tuple[int, ...] = (), param_dtype: str = "float32", dtype: str = "float32"):
        kw = dict(rngs=rngs, stack=stack, param_dtype=param_dtype, dtype=dtype)
        self.fc1 = Linear(dim, hidden, axes=(axes[0], axes[1]), **kw)
        self.fc2 = Linear(hidden, dim, axes=(axes[1], axes[0]), **kw)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(ACTIVATIONS[self.act](self.fc1(x)))


class ExpertLinear(nnx.Module):
    """E stacked bias-free kernels `[E, D, F]` (one `Qwen2MLP` projection per expert); `[E, F, D]`
    when `kernel_transposed` (the decode loop's copy, see `Linear`)."""

    def __init__(self, num_experts: int, d_in: int, d_out: int, *, axes: tuple[str, str], rngs: nnx.Rngs,
                 stack: tuple[int, ...] = (), param_dtype: str = "float32"):
        self.kernel = make_param(rngs, normal(0.02), (num_experts, d_in, d_out), ("expert",) + tuple(axes),
                                 stack=stack, param_dtype=param_dtype)
        self.kernel_transposed = False


class GMoEMLP(nnx.Module):
    """Granularity-routed SwiGLU experts: `down(silu(gate(x)) * up(x))` with expert g per example.

    Corresponds to `nn.ModuleList([Qwen2MLP] * 3)` indexed by `granularity` in the reference
    `Qwen2GMoEDecoderLayer`. Dispatch modes:
      * ``grouped``: the whole batch uses expert `granularity[0]` (selected with a dynamic index;
        cost of one dense MLP). Matches the reference, whose forward takes one integer.
      * ``dense_mask``: every expert runs and a one-hot mask picks each example's output; exact
        for mixed batches, and unselected experts get exactly zero gradient.
    Per-example gathers of expert weights (`[B, D, F]` copies) are never built.
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, *, dispatch: str, rngs: nnx.Rngs,
                 stack: tuple[int, ...] = (), param_dtype: str = "float32", dtype: str = "float32"):
        kw = dict(rngs=rngs, stack=stack, param_dtype=param_dtype)
        self.gate_proj = ExpertLinear(num_experts, dim, hidden, axes=("embed", "mlp"), **kw)
        self.up_proj = ExpertLinear(num_experts, dim, hidden, axes=("embed", "mlp"), **kw)
        self.down_proj = ExpertLinear(num_experts, hidden, dim, axes=("mlp", "embed"), **kw)
        self.num_experts, self.dispatch, self.dtype = num_experts, dispatch, dtype

    def __call__(self, x: jax.Array, granularity: jax.Array) -> jax.Array:
        dtype = dtype_of(self.dtype)
        x = x.astype(dtype)
        projs = (self.gate_proj, self.up_proj, self.down_proj)
        gate, up, down = (p.kernel[...].astype(dtype) for p in projs)
        # Kernel index letters: `io` = [in, out] as built, `oi` = transposed (decode loop copy).
        io = ["oi" if p.kernel_transposed else "io" for p in projs]
        if self.num_experts == 1 or self.dispatch == "grouped":
            g = jnp.clip(granularity[0], 0, self.num_experts - 1) if self.num_experts > 1 else 0
            gate, up, down = (jax.lax.dynamic_index_in_dim(w, g, 0, keepdims=False) for w in (gate, up, down))
            h = jax.nn.silu(jnp.einsum(f"bti,{io[0]}->bto", x, gate)) * jnp.einsum(f"bti,{io[1]}->bto", x, up)
            return jnp.einsum(f"bti,{io[2]}->bto", h, down)
        onehot = jax.nn.one_hot(granularity, self.num_experts, dtype=dtype)  # [B, E]
        h = jax.nn.silu(jnp.einsum(f"bti,e{io[0]}->beto", x, gate)) * jnp.einsum(f"bti,e{io[1]}->beto", x, up)
        y = jnp.einsum(f"beti,e{io[2]}->beto", h, down)
        return jnp.einsum("betd,be->btd", y, onehot)
