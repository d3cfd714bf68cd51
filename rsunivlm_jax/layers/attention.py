"""Multi-head / grouped-query attention with an optional preallocated KV cache.

Glossary:
  B batch, T query length, S key length (= T, or the cache length), D model width,
  H query heads, G kv heads, R = H // G query heads per kv head, K head_dim.
Masks are boolean `[B, T, S]` (True = may attend); the softmax runs in float32.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rsunivlm_jax.layers.common import Linear, dtype_of
from rsunivlm_jax.layers.rope import apply_rope

NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)


class KVCache(NamedTuple):
    """Per-layer cache; stacked over layers it is `[L, B, S, G, K]`."""

    k: jax.Array  # [B, S, G, K]
    v: jax.Array  # [B, S, G, K]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                          scale: float, *, causal_blocks: int = 1) -> jax.Array:
    """q [B,T,H,K], k/v [B,S,G,K], mask [B,T,S] -> [B,T,H,K]; GQA by grouping query heads.

    `causal_blocks > 1` promises a lower-triangular mask (query t never attends key s > t, as in
    the decoder) and splits the queries into that many blocks, each attending only the keys up to
    its last query: the masked upper triangle is never computed (`_causal_blocks`).

    The logits / probabilities `[B, G, T, R, S]` keep the order in which the QK^T dot produces
    them (batch dims, then the query's free dims in their own order, then S). The order
    `[B, G, R, T, S]` used before cost a full transpose of the layer's largest tensor in the
    forward pass, in the remat recompute and in the backward pass (docs/profiling.md,
    `python -m bench.attention_layout`). Same math; results agree to float32 rounding.
    """
    b, t, h, kd = q.shape
    g = k.shape[2]
    q = q.reshape(b, t, g, h // g, kd)
    if causal_blocks > 1 and mask is not None and t >= 2 * causal_blocks:
        out = _causal_blocks(q, k, v, mask, scale, causal_blocks)
    else:
        out = _attend(q, k, v, mask, scale)
    return out.reshape(b, t, h, kd)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, scale: float) -> jax.Array:
    """q [B,T,G,R,K], k/v [B,S,G,K], mask [B,T,S] -> [B,T,G,R,K]."""
    logits = jnp.einsum("btgrk,bsgk->bgtrs", q, k).astype(jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask[:, None, :, None, :], logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bgtrs,bsgk->btgrk", probs, v)


def _causal_blocks(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float,
                   blocks: int) -> jax.Array:
    """`_attend` for a lower-triangular mask, query block by query block over keys [0, end of block).

    Same values: the skipped keys are masked for every query of the block, so they add exactly 0
    to its softmax. The one exception is a query with no key at all (left padding), which `_attend`
    gives the mean of all S values (a softmax of equal logits); it gets that here too, explicitly.
    Two blocks of a 1,024-position decoder layer: forward + backward 30% faster (docs/profiling.md).
    """
    t = q.shape[1]
    ends = [t * (i + 1) // blocks for i in range(blocks)]
    outs = [_attend(q[:, lo:hi], k[:, :hi], v[:, :hi], mask[:, lo:hi, :hi], scale)
            for lo, hi in zip([0] + ends[:-1], ends)]
    out = jnp.concatenate(outs, axis=1)
    no_key = ~jnp.any(mask, axis=-1)  # [B, T]
    mean_v = jnp.mean(v, axis=1).astype(out.dtype)  # [B, G, K]
    return jnp.where(no_key[:, :, None, None, None], mean_v[:, None, :, None, :], out)


class Attention(nnx.Module):
    """Self-attention with q/k/v/o projections (transformers `Qwen2Attention` / `SiglipAttention`).

    `o_name` is the output projection's attribute name (`o_proj` for Qwen2, `out_proj` for SigLIP).
    """

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, *, qkv_bias: bool, o_bias: bool,
                 o_name: str, axes: dict[str, str], rngs: nnx.Rngs, stack: tuple[int, ...] = (),
                 param_dtype: str = "float32", dtype: str = "float32"):
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        kw = dict(rngs=rngs, stack=stack, param_dtype=param_dtype, dtype=dtype)
        emb, q_ax, kv_ax = axes["embed"], axes["q_heads"], axes["kv_heads"]
        self.q_proj = Linear(dim, num_heads * self.head_dim, axes=(emb, q_ax), use_bias=qkv_bias, **kw)
        self.k_proj = Linear(dim, num_kv_heads * self.head_dim, axes=(emb, kv_ax), use_bias=qkv_bias, **kw)
        self.v_proj = Linear(dim, num_kv_heads * self.head_dim, axes=(emb, kv_ax), use_bias=qkv_bias, **kw)
        self.o_name = o_name
        setattr(self, o_name, Linear(num_heads * self.head_dim, dim, axes=(q_ax, emb), use_bias=o_bias, **kw))
        self.dtype = dtype

    def __call__(self, x: jax.Array, mask: jax.Array | None, *, rope: tuple[jax.Array, jax.Array] | None = None,
                 cache: KVCache | None = None, cache_index: jax.Array | int = 0, causal_blocks: int = 1
                 ) -> tuple[jax.Array, KVCache | None]:
        """`causal_blocks`: see `dot_product_attention` (the mask must then be lower-triangular)."""
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            idx = jnp.asarray(cache_index, jnp.int32)
            zero = jnp.zeros((), jnp.int32)
            k_all = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (zero, idx, zero, zero))
            v_all = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (zero, idx, zero, zero))
            cache = KVCache(k_all, v_all)
            k, v = k_all.astype(q.dtype), v_all.astype(q.dtype)
        out = dot_product_attention(q, k, v, mask, self.head_dim ** -0.5, causal_blocks=causal_blocks)
        out = out.reshape(b, t, self.num_heads * self.head_dim)
        return getattr(self, self.o_name)(out), cache


def causal_mask(attention_mask: jax.Array) -> jax.Array:
    """attention_mask int/bool [B, T] (1 = real token) -> bool [B, T, T] causal + key padding."""
    t = attention_mask.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    return causal[None] & attention_mask.astype(bool)[:, None, :]


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Position ids 0..n-1 over the real tokens of each row; padding gets 0 (HF generate style)."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0) * mask
