"""The `mlp2x_gelu` projector (LLaVA `mm_projector`; transformers `LlavaOnevisionMultiModalProjector`).

Linear(Dv -> D), exact erf GELU, Linear(D -> D), plus the learned `image_newline` vector that
RSUniVLM appends once after each image's patch tokens (730 positions per image).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.layers.common import Linear, make_param, normal
from rsunivlm_jax.layers.mlp import ACTIVATIONS
from rsunivlm_jax.sharding import constrain


class Connector(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        dv, d = cfg.vision.hidden_size, cfg.decoder.hidden_size
        kw = dict(rngs=rngs, param_dtype=cfg.param_dtype, dtype=cfg.dtype)
        self.linear_1 = Linear(dv, d, axes=("conn_in", "conn_out"), **kw)
        self.linear_2 = Linear(d, d, axes=("conn_out", "embed"), **kw)
        self.image_newline = (make_param(rngs, normal(d ** -0.5), (d,), ("norm",), param_dtype=cfg.param_dtype)
                              if cfg.connector.use_image_newline else None)
        self.act = cfg.connector.hidden_act

    def __call__(self, features: jax.Array) -> jax.Array:
        """features `[B, N, Dv]` -> `[B, N (+1), D]` with `image_newline` appended, batch-sharded like
        the decoder's activations (not width-sharded like `linear_2`'s output axis), so that splicing
        the patches into the text rows needs no resharding."""
        x = self.linear_2(ACTIVATIONS[self.act](self.linear_1(features)))
        if self.image_newline is not None:
            newline = jnp.broadcast_to(self.image_newline[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
            x = jnp.concatenate([x, newline], axis=1)
        return constrain(x, ("batch", "seq", "act_embed"))
