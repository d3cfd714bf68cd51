"""The full RSUniVLM: encode images, splice them at their placeholders, run the G-MoE decoder.

Reference: `LlavaQwenGMoEForCausalLM` + `prepare_inputs_labels_for_multimodal` in
`llava/model/llava_arch.py` (square images, one base view per image, `image_newline` appended).

Splicing (static shapes): `input_ids [B, T]` holds one `image_token_id` per image. Each is
replaced by that image's P = patches + 1 embeddings, so a row with n images grows by
n * (P - 1). The output buffer has room for N = `pixel_values.shape[1]` images,
L = T + N * (P - 1); rows with fewer images are right-aligned behind extra left padding, which
keeps the last real token last (as left-padded generation needs).

Glossary: B batch, T text length, N image slots, P positions per image, L expanded length,
D width, V vocabulary rows.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.layers.attention import causal_mask, positions_from_mask
from rsunivlm_jax.layers.common import dtype_of
from rsunivlm_jax.models.connector import Connector
from rsunivlm_jax.models.qwen2 import Decoder, LMHead
from rsunivlm_jax.models.siglip import VisionTower


class Layout(NamedTuple):
    """Where each text token lands in the expanded sequence."""

    embeds: jax.Array  # [B, L, D]
    attention_mask: jax.Array  # int32 [B, L]
    text_end: jax.Array  # int32 [B, T]: expanded index of token t (last position of an image block)


def _row_layout(ids, mask, is_img, n_slots: int, extra: int):
    """One row: (source token [L], image slot [L], offset in image block [L], valid [L], text_end [T])."""
    t = ids.shape[0]
    is_img = is_img.astype(jnp.int32)
    before = jnp.cumsum(is_img) - is_img
    offset = (n_slots - jnp.sum(is_img)) * extra
    start = offset + jnp.arange(t) + before * extra
    length = t + n_slots * extra
    j = jnp.arange(length)
    src = jnp.clip(jnp.searchsorted(start, j, side="right") - 1, 0, t - 1)
    valid = (j >= offset) & (mask[src] > 0)
    return src, before[src], j - start[src], valid, start + is_img * extra


class RSUniVLM(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.config = config
        self.vision = VisionTower(config, rngs)
        self.connector = Connector(config, rngs)
        self.decoder = Decoder(config, rngs)
        self.lm_head = None if config.decoder.tie_word_embeddings else LMHead(config, rngs)

    def encode_images(self, pixel_values: jax.Array) -> jax.Array:
        """`[B, N, S, S, 3]` normalised pixels -> `[B, N, P, D]` LLM embeddings (patches + newline)."""
        b, n = pixel_values.shape[:2]
        feats = self.vision(pixel_values.reshape((b * n,) + pixel_values.shape[2:]))
        emb = self.connector(feats)
        return emb.reshape((b, n) + emb.shape[1:])

    def embed_inputs(self, input_ids: jax.Array, pixel_values: jax.Array | None,
                     attention_mask: jax.Array | None = None) -> Layout:
        """Embeds text, splices image embeddings at placeholders (see module docstring)."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        text = self.decoder.embed(input_ids)
        if pixel_values is None or pixel_values.shape[1] == 0:
            t = input_ids.shape[1]
            return Layout(text, attention_mask.astype(jnp.int32), jnp.broadcast_to(jnp.arange(t), input_ids.shape))
        images = self.encode_images(pixel_values).astype(text.dtype)  # [B, N, P, D]
        b, n, p, d = images.shape
        is_img = input_ids == self.config.image_token_id
        src, slot, k, valid, text_end = jax.vmap(_row_layout, in_axes=(0, 0, 0, None, None))(
            input_ids, attention_mask, is_img, n, p - 1)
        txt = jnp.take_along_axis(text, src[..., None], axis=1)
        flat_idx = jnp.clip(slot, 0, n - 1) * p + jnp.clip(k, 0, p - 1)
        img = jnp.take_along_axis(images.reshape(b, n * p, d), flat_idx[..., None], axis=1)
        use_img = jnp.take_along_axis(is_img, src, axis=1)
        embeds = jnp.where(valid[..., None], jnp.where(use_img[..., None], img, txt), 0)
        return Layout(embeds, valid.astype(jnp.int32), text_end.astype(jnp.int32))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final hidden `[..., D]` -> float32 logits `[..., V]`."""
        dtype = dtype_of(self.config.dtype)
        if self.lm_head is None:
            kernel = self.decoder.embed_tokens["embedding"][...].astype(dtype)
            return jnp.einsum("...d,vd->...v", hidden.astype(dtype), kernel, preferred_element_type=jnp.float32)
        kernel = self.lm_head.kernel[...].astype(dtype)
        return jnp.einsum("...d,dv->...v", hidden.astype(dtype), kernel, preferred_element_type=jnp.float32)

    def __call__(self, input_ids: jax.Array, pixel_values: jax.Array | None, granularity: jax.Array,
                 attention_mask: jax.Array | None = None, *, output: str = "expanded") -> jax.Array:
        """Logits over the expanded sequence (`output="expanded"`, `[B, L, V]`) or at each text token's
        last position (`output="text"`, `[B, T, V]`: entry t predicts token t + 1)."""
        layout = self.embed_inputs(input_ids, pixel_values, attention_mask)
        positions = positions_from_mask(layout.attention_mask)
        hidden, _ = self.decoder(layout.embeds, positions, causal_mask(layout.attention_mask),
                                 jnp.asarray(granularity, jnp.int32))
        if output == "text":
            hidden = jnp.take_along_axis(hidden, layout.text_end[..., None], axis=1)
        elif output != "expanded":
            raise ValueError(f"output={output!r}; expected 'expanded' or 'text'")
        return self.logits(hidden)
