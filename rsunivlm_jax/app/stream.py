"""Token-by-token generation: each new token reaches the host as soon as it is chosen.

Counterpart: transformers `generate(..., streamer=TextIteratorStreamer(...))`. The fused decoder
loop of `rsunivlm_jax.inference.generate` (one `jax.lax.while_loop`) only returns when every token
is done, so streaming runs the same steps from the host instead, as two jitted programs built from
the same public pieces (`RSUniVLM.embed_inputs`, `Decoder` with its KV cache, `RSUniVLM.logits`,
`inference.sampling`, `inference.constrained`):

    prefill(prompt, images)          -> first logits + KV cache (one call)
    step(carry, i)                   -> token i, logits for token i + 1, cache updated in place

Semantics are those of `generate` (same processors, constraint masks, eos handling and
`fold_in(rng, i)` sampling keys), so greedy and sampled answers match it token for token
(tests/app/test_stream.py). Compiled programs are cached per (prompt-length bucket, image count,
cache capacity, decoding settings, constraint kind) and shared by every request. One step is kept
in flight while the host decodes the previous token.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.functional import merge
from rsunivlm_jax.inference import constrained as C
from rsunivlm_jax.inference import sampling
from rsunivlm_jax.inference.sampling import SamplingParams
from rsunivlm_jax.layers.attention import KVCache, positions_from_mask
from rsunivlm_jax.layers.common import dtype_of

LENGTH_BUCKET = 64     # prompt ids are left-padded to a multiple of this (as `generate` does)
CAPACITY_BUCKET = 64   # cache slots for new tokens are rounded up to a multiple of this


@dataclasses.dataclass(frozen=True)
class _Static:
    """Hashable settings of the compiled programs (part of the jit cache key)."""

    capacity: int
    sampling: SamplingParams
    vocab_limit: int | None


@functools.partial(jax.jit, static_argnums=(0, 1))
def _prefill(graphdef, st: _Static, params, input_ids, attention_mask, pixel_values, granularity):
    model = merge(graphdef, params)
    cfg: ModelConfig = model.config
    layout = model.embed_inputs(input_ids, pixel_values, attention_mask)
    mask = layout.attention_mask
    b, length = mask.shape
    total = length + st.capacity
    dec = cfg.decoder
    shape = (dec.num_hidden_layers, b, total, dec.num_key_value_heads, dec.head_dim)
    cache = KVCache(jnp.zeros(shape, dtype_of(cfg.dtype)), jnp.zeros(shape, dtype_of(cfg.dtype)))
    keys = jnp.concatenate([mask, jnp.zeros((b, st.capacity), jnp.int32)], axis=1)
    prefill_mask = jnp.tril(jnp.ones((length, total), bool))[None] & keys[:, None, :].astype(bool)
    hidden, cache = model.decoder(layout.embeds, positions_from_mask(mask), prefill_mask, granularity, cache=cache,
                                  cache_index=0)
    logits = model.logits(hidden[:, -1])
    presence = jnp.zeros((b, logits.shape[-1]), bool)
    sp = st.sampling
    if sp.repetition_penalty != 1.0 and sp.penalize_prompt:
        seen = jnp.where(attention_mask > 0, input_ids, logits.shape[-1])  # padding -> dropped index
        presence = presence.at[jnp.arange(b)[:, None], seen].set(True, mode="drop")
    return {"next_logits": logits, "keys": keys, "cache": cache, "presence": presence,
            "pos0": jnp.sum(mask, axis=1), "granularity": granularity}


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(3,))
def _step(graphdef, st: _Static, params, carry, cstate, constraint, key, i, remaining):
    """Token i from the current logits, then the decoder on it for the logits of token i + 1."""
    model = merge(graphdef, params)
    sp = st.sampling
    use_penalty = sp.repetition_penalty != 1.0
    logits = sampling.mask_vocab(carry["next_logits"], st.vocab_limit)
    allowed = None if constraint is None else C.allowed_tokens(constraint, cstate, remaining)
    logits = sampling.process(logits, carry["presence"] if use_penalty else None, sp, allowed)
    tok = sampling.choose(logits, sp, jax.random.fold_in(key, i))
    b = tok.shape[0]
    carry = dict(carry)
    if use_penalty:
        carry["presence"] = carry["presence"].at[jnp.arange(b), tok].set(True)
    if constraint is not None:
        cstate = C.advance(constraint, cstate, tok)
    index = carry["keys"].shape[1] - st.capacity + i
    carry["keys"] = jax.lax.dynamic_update_slice(carry["keys"], jnp.ones((b, 1), jnp.int32), (0, index))
    hidden, carry["cache"] = model.decoder(model.decoder.embed(tok[:, None]), (carry["pos0"] + i)[:, None],
                                           carry["keys"][:, None, :].astype(bool), carry["granularity"],
                                           cache=carry["cache"], cache_index=index)
    carry["next_logits"] = model.logits(hidden[:, 0])
    return tok, carry, cstate


def _bucket(n: int, bucket: int) -> int:
    return max(bucket, math.ceil(n / bucket) * bucket)


def stream_tokens(graphdef, params, config: ModelConfig, input_ids: Sequence[int], pixel_values=None,
                  granularity: int = 0, *, max_new_tokens: int, eos_ids: Sequence[int],
                  sampling_params: SamplingParams | None = None, rng: int | jax.Array = 0,
                  constraint: C.Constraint | None = None) -> Iterator[int]:
    """Yields the generated ids of one prompt one at a time (the eos id last, when reached).

    input_ids: one prompt (image placeholders included), pixel_values float32 [N, S, S, 3] or None,
    granularity: the expert (`rsunivlm_jax.route`). Same decoding as
    `rsunivlm_jax.inference.generate.generate` for a batch of one.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    sp = sampling_params if sampling_params is not None else SamplingParams()
    ids = np.asarray(input_ids, np.int32).reshape(-1)
    t = _bucket(ids.shape[0], LENGTH_BUCKET)
    pad = int(config.pad_token_id)
    ids = np.concatenate([np.full((t - ids.shape[0],), pad, np.int32), ids])[None]
    mask = (np.arange(t) >= t - len(input_ids)).astype(np.int32)[None]
    px = None if pixel_values is None or len(pixel_values) == 0 else np.asarray(pixel_values, np.float32)[None]
    if constraint is not None:
        if constraint.batch_size != 1:
            raise ValueError(f"constraint is for {constraint.batch_size} rows; streaming decodes one")
        need = int(C.min_length(constraint)[0])
        if bool(np.asarray(constraint.rows["enabled"])[0]) and need > max_new_tokens:
            raise ValueError(f"max_new_tokens={max_new_tokens} cannot hold a complete constrained answer "
                             f"(shortest: {need} tokens)")
    vocab_limit = config.tokenizer_vocab_size if config.tokenizer_vocab_size < config.decoder.vocab_size else None
    st = _Static(capacity=_bucket(max_new_tokens, CAPACITY_BUCKET), sampling=sp, vocab_limit=vocab_limit)
    key = jax.random.key(rng) if isinstance(rng, int) else rng
    eos = {int(e) for e in eos_ids}
    carry = _prefill(graphdef, st, params, ids, mask, px, np.asarray([granularity], np.int32))
    cstate = constraint.init_state() if constraint is not None else {}
    pending = _step(graphdef, st, params, carry, cstate, constraint, key, np.int32(0), np.int32(max_new_tokens))
    for i in range(max_new_tokens):
        tok, carry, cstate = pending
        if i + 1 < max_new_tokens:  # dispatch the next step before waiting for this token
            pending = _step(graphdef, st, params, carry, cstate, constraint, key, np.int32(i + 1),
                            np.int32(max_new_tokens - i - 1))
        token = int(np.asarray(tok)[0])
        yield token
        if token in eos:
            return
