"""Qwen2 decoder with G-MoE feed-forward (reference `Qwen2GMoEModel` in `llava_qwen_gmoe.py`).

Layer l, with expert g fixed per sequence:
    h = x + Attn(RMSNorm_in(x))          # causal GQA, RoPE
    y = h + Expert[g](RMSNorm_post(h))

Glossary: B batch, T sequence, D width, V vocabulary rows, L layers; caches are `[L, B, S, G, K]`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.layers.attention import Attention, KVCache
from rsunivlm_jax.layers.common import dtype_of, make_param, normal
from rsunivlm_jax.layers.mlp import GMoEMLP
from rsunivlm_jax.layers.norms import RMSNorm
from rsunivlm_jax.layers.rope import rope_cos_sin
from rsunivlm_jax.layers.scan import scan_layers
from rsunivlm_jax.sharding import constrain

LM_AXES = {"embed": "embed", "q_heads": "q_heads", "kv_heads": "kv_heads"}


class DecoderLayer(nnx.Module):
    """One `Qwen2GMoEDecoderLayer` (E=1: transformers `Qwen2DecoderLayer`)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, stack: tuple[int, ...] = ()):
        d = cfg.decoder
        kw = dict(rngs=rngs, stack=stack, param_dtype=cfg.param_dtype)
        self.input_layernorm = RMSNorm(d.hidden_size, eps=d.rms_norm_eps, **kw)
        self.self_attn = Attention(d.hidden_size, d.num_attention_heads, d.num_key_value_heads, qkv_bias=True,
                                   o_bias=False, o_name="o_proj", axes=LM_AXES, dtype=cfg.dtype, **kw)
        self.post_attention_layernorm = RMSNorm(d.hidden_size, eps=d.rms_norm_eps, **kw)
        self.mlp = GMoEMLP(d.hidden_size, d.intermediate_size, cfg.gmoe.num_experts, dispatch=cfg.gmoe_dispatch,
                           dtype=cfg.dtype, **kw)
        self.dtype = cfg.dtype
        self.causal_blocks = cfg.attention_causal_blocks

    def __call__(self, x, mask, rope, granularity, cache=None, cache_index=0):
        h, cache = self.self_attn(self.input_layernorm(x), mask, rope=rope, cache=cache, cache_index=cache_index,
                                  causal_blocks=self.causal_blocks)
        x = x + h.astype(x.dtype)
        x = x + self.mlp(self.post_attention_layernorm(x), granularity).astype(x.dtype)
        return constrain(x, ("batch", "seq", "act_embed")), cache


class Decoder(nnx.Module):
    """transformers `Qwen2Model`: embed_tokens, stacked layers, final norm."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d = cfg.decoder
        self.embed_tokens = nnx.Dict(embedding=make_param(rngs, normal(0.02), (d.vocab_size, d.hidden_size),
                                                          ("vocab", "embed"), param_dtype=cfg.param_dtype))
        self.layers = DecoderLayer(cfg, rngs, stack=(d.num_hidden_layers,))
        self.norm = RMSNorm(d.hidden_size, eps=d.rms_norm_eps, rngs=rngs, param_dtype=cfg.param_dtype)
        self.head_dim, self.rope_theta = d.head_dim, d.rope_theta
        self.remat_policy, self.dtype = cfg.remat_policy, cfg.dtype

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """`[B, T]` ids -> `[B, T, D]` embeddings, batch-sharded like the decoder's activations.

        The table is gathered over its width first (as FSDP does for every kernel): a lookup from a
        width-sharded table yields width-sharded rows, which cannot become batch-sharded without
        the partitioner replicating the lookup (an "involuntary full rematerialization").
        """
        table = constrain(self.embed_tokens["embedding"][...], ("vocab", None))
        x = jnp.take(table, input_ids, axis=0).astype(dtype_of(self.dtype))
        return constrain(x, ("batch", "seq", "act_embed"))

    def __call__(self, embeds: jax.Array, positions: jax.Array, mask: jax.Array, granularity: jax.Array,
                 cache=None, cache_index: jax.Array | int = 0, *, unrolled=None):
        """embeds `[B, T, D]`, positions `[B, T]`, mask bool `[B, T, S]` -> (normed hidden `[B, T, D]`, cache).

        The mask must be lower-triangular (query t never sees key s > t; `attention.causal_mask`)
        unless `config.attention_causal_blocks == 1`. `unrolled`: a list of one `DecoderLayer` per
        layer to run in a Python loop instead of the scan over the stacked layers (the decode loop
        passes its own per-layer copies); `cache` is then a list of per-layer caches."""
        rope = rope_cos_sin(positions, self.head_dim, self.rope_theta)
        x = constrain(embeds.astype(dtype_of(self.dtype)), ("batch", "seq", "act_embed"))
        if unrolled is not None:
            new_cache = []
            for layer, layer_cache in zip(unrolled, cache):
                x, layer_cache = layer(x, mask, rope, granularity, cache=layer_cache, cache_index=cache_index)
                new_cache.append(layer_cache)
            return self.norm(x), new_cache

        def body(layer, h, layer_cache):
            return layer(h, mask, rope, granularity, cache=layer_cache, cache_index=cache_index)

        x, new_cache = scan_layers(self.layers, body, x, cache, remat_policy=self.remat_policy)
        return self.norm(x), new_cache


class LMHead(nnx.Module):
    """Untied `lm_head` (`[D, V]`); the released RSUniVLM stores it separately from embed_tokens."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d = cfg.decoder
        self.kernel = make_param(rngs, normal(0.02), (d.hidden_size, d.vocab_size), ("embed", "vocab"),
                                 param_dtype=cfg.param_dtype)
