"""Feed-forward blocks: SigLIP GELU MLP and the G-MoE stack of SwiGLU experts.

Glossary: B batch, T sequence, D width, F hidden, E experts.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rsunivlm_jax import routing
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
    """E stacked bias-free kernels `[E, D, F]`: one `Qwen2MLP` projection per expert.

    `lora`: per-expert adapters attached by `rsunivlm_jax.lora.adapters` (None otherwise); `weight()`
    then returns `W_e + scaling * A_e @ B_e`, so every routing strategy routes rows to their expert's
    adapter exactly as to its kernel. `kernel_transposed`: stored `[E, out, in]` (the decode copy, see
    `Linear`; only for one expert and no adapter, and then `GMoEMLP` reads it directly)."""

    lora = None
    kernel_transposed = False

    def __init__(self, num_experts: int, d_in: int, d_out: int, *, axes: tuple[str, str], rngs: nnx.Rngs,
                 stack: tuple[int, ...] = (), param_dtype: str = "float32"):
        self.kernel = make_param(rngs, normal(0.02), (num_experts, d_in, d_out), ("expert",) + tuple(axes),
                                 stack=stack, param_dtype=param_dtype)

    def weight(self) -> jax.Array:
        """The stacked kernels `[E, in, out]` every routing strategy consumes."""
        if self.lora is not None:
            return self.kernel[...] + self.lora.weight_delta()
        return self.kernel[...]


class GMoEMLP(nnx.Module):
    """Granularity-routed SwiGLU experts: `down(silu(gate(x)) * up(x))` with expert g per example.

    Corresponds to `nn.ModuleList([Qwen2MLP] * 3)` indexed by `granularity` in the reference
    `Qwen2GMoEDecoderLayer`, which runs one expert for a whole forward. Each row here runs its
    own expert, exactly, by the strategy `dispatch` (`rsunivlm_jax.routing.moe_mlp`).
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, *, dispatch: str, rngs: nnx.Rngs,
                 stack: tuple[int, ...] = (), param_dtype: str = "float32", dtype: str = "float32"):
        kw = dict(rngs=rngs, stack=stack, param_dtype=param_dtype)
        self.gate_proj = ExpertLinear(num_experts, dim, hidden, axes=("embed", "mlp"), **kw)
        self.up_proj = ExpertLinear(num_experts, dim, hidden, axes=("embed", "mlp"), **kw)
        self.down_proj = ExpertLinear(num_experts, hidden, dim, axes=("mlp", "embed"), **kw)
        self.dispatch, self.dtype = dispatch, dtype

    # One expert and more than one position (training on the batch's expert slice, prefill of a
    # dense or homogeneous model): gate and up run as one GEMM over their kernels concatenated in
    # the step. The parameters, their names and their adapters stay separate. One decode step (one
    # position) keeps two GEMVs, which were faster there. docs/profiling.md,
    # `python -m bench.micro mlp_train`. False: always the routed two-GEMM path.
    fuse_gate_up = True

    def __call__(self, x: jax.Array, granularity: jax.Array) -> jax.Array:
        dtype = dtype_of(self.dtype)
        if self.gate_proj.kernel_transposed:  # the decode copy: one expert, kernels [1, out, in]
            gate, up, down = (p.kernel[...][0].astype(dtype) for p in (self.gate_proj, self.up_proj, self.down_proj))
            return routing._swiglu(x.astype(dtype), gate, up, down, spec="bti,oi->bto")
        kernels = tuple(p.weight().astype(dtype) for p in (self.gate_proj, self.up_proj, self.down_proj))
        x = x.astype(dtype)
        if self.fuse_gate_up and kernels[0].shape[0] == 1 and x.ndim == 3 and x.shape[1] > 1:
            gate, up, down = (w[0] for w in kernels)
            f = gate.shape[-1]
            gu = jnp.einsum("bti,io->bto", x, jnp.concatenate([gate, up], axis=-1))
            return jnp.einsum("bti,io->bto", jax.nn.silu(gu[..., :f]) * gu[..., f:], down)
        return routing.moe_mlp(x, kernels, granularity, self.dispatch)
