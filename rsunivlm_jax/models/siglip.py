"""SigLIP vision tower (transformers `SiglipVisionTransformer`, no attention-pool head).

RSUniVLM keeps 26 of so400m's 27 blocks and reads features before `post_layernorm`
(docs/architecture.md). The post-LN parameters stay in the tree so conversion is lossless.

Glossary: B images, P patch size, N = (S/P)^2 patches, C channels, D width.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.layers.attention import Attention
from rsunivlm_jax.layers.common import dtype_of, make_param, normal, zeros
from rsunivlm_jax.layers.mlp import GeluMLP
from rsunivlm_jax.layers.norms import LayerNorm
from rsunivlm_jax.layers.scan import scan_layers
from rsunivlm_jax.sharding import constrain

VIT_AXES = {"embed": "vit_embed", "q_heads": "vit_heads", "kv_heads": "vit_heads"}


class PatchEmbedding(nnx.Module):
    """Conv2d(C, D, kernel=P, stride=P, valid) as patchify + einsum; kernel `[P, P, C, D]` (HWIO)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        self.kernel = make_param(rngs, normal(0.02), (v.patch_size, v.patch_size, v.num_channels, v.hidden_size),
                                 (None, None, None, "vit_embed"), param_dtype=cfg.param_dtype)
        self.bias = make_param(rngs, zeros, (v.hidden_size,), ("vit_embed",), param_dtype=cfg.param_dtype)
        self.patch_size, self.dtype = v.patch_size, cfg.dtype

    def __call__(self, pixels: jax.Array) -> jax.Array:
        b, h, w, c = pixels.shape
        p = self.patch_size
        nh, nw = h // p, w // p
        x = pixels[:, : nh * p, : nw * p].reshape(b, nh, p, nw, p, c).astype(dtype_of(self.dtype))
        y = jnp.einsum("bhpwqc,pqcd->bhwd", x, self.kernel[...].astype(x.dtype)) + self.bias[...].astype(x.dtype)
        return y.reshape(b, nh * nw, -1)


class Embeddings(nnx.Module):
    """transformers `SiglipVisionEmbeddings`: patch embedding + learned position table."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.patch_embedding = PatchEmbedding(cfg, rngs)
        self.position_embedding = nnx.Dict(
            embedding=make_param(rngs, normal(0.02), (cfg.vision.num_patches, cfg.vision.hidden_size),
                                 (None, "vit_embed"), param_dtype=cfg.param_dtype))

    def __call__(self, pixels: jax.Array) -> jax.Array:
        x = self.patch_embedding(pixels)
        return x + self.position_embedding["embedding"][...].astype(x.dtype)[None]


class EncoderLayer(nnx.Module):
    """transformers `SiglipEncoderLayer`: pre-LN attention and tanh-GELU MLP blocks."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, stack: tuple[int, ...] = ()):
        v = cfg.vision
        kw = dict(rngs=rngs, stack=stack, param_dtype=cfg.param_dtype)
        self.layer_norm1 = LayerNorm(v.hidden_size, eps=v.layer_norm_eps, **kw)
        self.self_attn = Attention(v.hidden_size, v.num_attention_heads, v.num_attention_heads, qkv_bias=True,
                                   o_bias=True, o_name="out_proj", axes=VIT_AXES, dtype=cfg.dtype, **kw)
        self.layer_norm2 = LayerNorm(v.hidden_size, eps=v.layer_norm_eps, **kw)
        self.mlp = GeluMLP(v.hidden_size, v.intermediate_size, act=v.hidden_act, axes=("vit_embed", "vit_mlp"),
                           dtype=cfg.dtype, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h, _ = self.self_attn(self.layer_norm1(x), None)
        x = x + h
        return x + self.mlp(self.layer_norm2(x))


class VisionTower(nnx.Module):
    """Pixels `[B, S, S, 3]` (normalised to [-1, 1]) -> patch features `[B, N, D]`."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        v = cfg.vision
        self.embeddings = Embeddings(cfg, rngs)
        self.layers = EncoderLayer(cfg, rngs, stack=(v.num_hidden_layers,))
        self.post_layernorm = LayerNorm(v.hidden_size, eps=v.layer_norm_eps, rngs=rngs, param_dtype=cfg.param_dtype)
        self.num_layers_used, self.use_post_layernorm = v.num_layers_used, v.use_post_layernorm
        self.remat_policy = cfg.remat_policy

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """Activations are constrained to the batch sharding, as the decoder's are: without it XLA's
        propagation follows the FSDP-sharded weights and replicates the image batch (docs/scaling.md)."""
        act = ("batch", "seq", "act_embed")
        x = constrain(self.embeddings(constrain(pixels, ("batch", None, None, None))), act)
        x, _ = scan_layers(self.layers, lambda layer, h, _: (constrain(layer(h), act), None), x,
                           num_layers=self.num_layers_used, remat_policy=self.remat_policy)
        return self.post_layernorm(x) if self.use_post_layernorm else x
