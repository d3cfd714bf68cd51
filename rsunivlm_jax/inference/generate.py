"""Prefill + KV-cache decoding inside one `jax.jit` (`jax.lax.while_loop`), with transformers semantics.

Counterpart: transformers `GenerationMixin.generate` (greedy / multinomial sampling with
`RepetitionPenaltyLogitsProcessor`, temperature, top-k, top-p) as the LLaVA-NeXT `generate` of the
RSUniVLM demo calls it, plus optional grammar constraints (`rsunivlm_jax.inference.constrained`).

    prompt ids [B, T] (left-padded, one image placeholder per image)
      -> embed_inputs: images spliced in, rows right-aligned          [B, L, D]
      -> prefill: decoder over L positions into a preallocated cache   [layers, B, L + N, G, K]
      -> while_loop: pick token i (processors, constraint mask), feed it back at cache index L + i

Compiled once per (batch, prompt-length bucket, images, max_new_tokens, decoding settings): prompt
lengths are padded on the left to a multiple of `length_bucket`. `granularity [B]` routes the
G-MoE experts at prefill and at every decode step, each row its own expert. Logit rows beyond the
tokenizer length (padding rows of the embedding table) are masked. Rows stop at any eos id; finished rows emit `pad_id`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rsunivlm_jax import routing, tasks
from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.functional import merge
from rsunivlm_jax.inference import constrained as C
from rsunivlm_jax.inference import sampling
from rsunivlm_jax.inference.sampling import SamplingParams
from rsunivlm_jax.layers.attention import KVCache, positions_from_mask
from rsunivlm_jax.layers.common import Linear, dtype_of
from rsunivlm_jax.layers.mlp import GMoEMLP


class GenerateOutput(NamedTuple):
    tokens: np.ndarray  # int32 [B, max_new_tokens]; pad_id after each row's end
    lengths: np.ndarray  # int32 [B]: generated tokens, the eos included
    logits: np.ndarray | None = None  # float32 [B, max_new_tokens, V]: raw model logits of each step


@dataclasses.dataclass(frozen=True)
class _Static:
    """Hashable decoding settings (part of the jit cache key)."""

    max_new_tokens: int
    eos_ids: tuple[int, ...]
    pad_id: int
    sampling: SamplingParams
    vocab_limit: int | None
    return_logits: bool
    homogeneous: bool  # every row uses one expert (checked on the host)


def default_max_new_tokens(task: str | None, grid_size: int = tasks.DEFAULT_GRID_SIZE) -> int:
    """Per-task budget: short for VQA / CLS, long for masks (~40 tokens per grid row)."""
    if task in ("seg", "cd"):
        return 40 * grid_size
    return {"cls": 16, "vqa": 16, "vg": 64, "ref": 48, "cap": 128, "ccd": 96}.get(task, 256)


# --------------------------------------------------------------------------------------------
# The jitted core
# --------------------------------------------------------------------------------------------

def _decode_layers(model, granularity: jax.Array, homogeneous: bool, transpose: bool = True):
    """Per-layer parameter copies for the decode loop, made once before it.

    Inside `jax.lax.while_loop`, the prefill's `scan` over stacked layers would copy every layer's
    weights out of the stacked arrays at every step, tripling the memory traffic of a
    bandwidth-bound decode step. So the stack is split into one state per layer here and the layers
    are unrolled in the step. When every row uses one expert (`homogeneous`, known on the host),
    only that expert's slice is kept (`routing.take_expert`, by the `expert` logical axis).
    With `transpose` (the caller passes it for one-row batches) the copy also stores the projection
    kernels `[out, in]` and marks their modules `kernel_transposed` (the attention projections
    always; the expert MLP when one expert is left and it has no adapter): XLA:CPU's one-row GEMV
    reads that layout ~1.25x faster, while its 8-row GEMMs read `[in, out]` faster. The layers then
    contract the stored layout directly; a transpose back inside the loop would not be folded into
    the dot but copied at every step (4x slower decoding, docs/profiling.md).
    Returns (layer graphdef, [state per layer], granularity to pass to the layers).
    """
    cfg = model.config
    graphdef, state = nnx.split(model.decoder.layers)
    params = nnx.to_pure_dict(state)
    one_expert = cfg.gmoe.num_experts == 1 or homogeneous
    if cfg.gmoe.num_experts > 1 and homogeneous:
        params = routing.take_expert(params, routing.expert_axes(graphdef, params), granularity[0])
        granularity = jnp.zeros_like(granularity)
    stack = nnx.merge(graphdef, params)  # fresh modules: the caller's model is untouched
    for _, m in nnx.iter_modules(stack) if transpose else ():
        mlp = (m.gate_proj, m.up_proj, m.down_proj) if isinstance(m, GMoEMLP) else ()
        targets = [m] if isinstance(m, Linear) else (
            list(mlp) if one_expert and all(p.lora is None for p in mlp) else [])
        for t in targets:
            t.kernel.set_value(jnp.swapaxes(t.kernel[...], -1, -2))
            t.kernel_transposed = True
    graphdef, state = nnx.split(stack)
    params = nnx.to_pure_dict(state)
    layers = [jax.tree.map(lambda a, i=i: a[i], params) for i in range(cfg.decoder.num_hidden_layers)]
    return graphdef, layers, granularity


def _layers_for_step(graphdef, layers) -> list:
    """The per-layer modules of one decode step."""
    return [nnx.merge(graphdef, p) for p in layers]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _generate_jit(graphdef, st: _Static, params, input_ids, attention_mask, pixel_values, granularity, rng,
                  constraint):
    model = merge(graphdef, params)
    cfg: ModelConfig = model.config
    g = granularity.astype(jnp.int32)
    layout = model.embed_inputs(input_ids, pixel_values, attention_mask)
    mask = layout.attention_mask
    b, length = mask.shape
    n_new = st.max_new_tokens
    total = length + n_new
    dec = cfg.decoder
    cache_shape = (dec.num_hidden_layers, b, total, dec.num_key_value_heads, dec.head_dim)
    cache = KVCache(jnp.zeros(cache_shape, dtype_of(cfg.dtype)), jnp.zeros(cache_shape, dtype_of(cfg.dtype)))
    keys = jnp.concatenate([mask, jnp.zeros((b, n_new), jnp.int32)], axis=1)
    prefill_mask = jnp.tril(jnp.ones((length, total), bool))[None] & keys[:, None, :].astype(bool)
    hidden, cache = model.decoder(layout.embeds, positions_from_mask(mask), prefill_mask, g, cache=cache,
                                  cache_index=0)
    logits0 = model.logits(hidden[:, -1])  # rows are right-aligned: the last column is real
    vocab = logits0.shape[-1]
    pos0 = jnp.sum(mask, axis=1)  # position id of the first new token (transformers: cumsum - 1)
    rows = jnp.arange(b)

    sp = st.sampling
    use_penalty = sp.repetition_penalty != 1.0
    presence = jnp.zeros((b, vocab), bool)
    if use_penalty and sp.penalize_prompt:
        seen = jnp.where(attention_mask > 0, input_ids, vocab)  # padding -> dropped index
        presence = presence.at[rows[:, None], seen].set(True, mode="drop")
    eos = jnp.asarray(st.eos_ids, jnp.int32)

    layer_graphdef, layers, g_decode = _decode_layers(model, g, st.homogeneous, transpose=b == 1)

    def body(c):
        # Pick token i from the current logits, then run it through the decoder for the next logits.
        # (After the last token this computes logits nobody reads: one wasted step of max_new_tokens,
        # in exchange for a single copy of the step in the program, which halves compile time.)
        i = c["i"]
        logits = c["next_logits"]
        processed = sampling.mask_vocab(logits, st.vocab_limit)
        allowed = None
        if constraint is not None:
            allowed = C.allowed_tokens(constraint, c["cstate"], n_new - i)
        processed = sampling.process(processed, c["presence"] if use_penalty else None, sp, allowed)
        tok = sampling.choose(processed, sp, jax.random.fold_in(rng, i))
        tok = jnp.where(c["done"], st.pad_id, tok)
        c = dict(c)
        c["tokens"] = jax.lax.dynamic_update_slice(c["tokens"], tok[:, None], (0, i))
        c["lengths"] = c["lengths"] + (~c["done"]).astype(jnp.int32)
        if use_penalty:
            c["presence"] = c["presence"].at[rows, tok].set(True)
        if constraint is not None:
            c["cstate"] = C.advance(constraint, c["cstate"], tok)
        if st.return_logits:
            c["logits"] = jax.lax.dynamic_update_slice(c["logits"], logits[:, None].astype(jnp.float32), (0, i, 0))
        c["done"] = c["done"] | jnp.isin(tok, eos)
        index = length + i
        c["keys"] = jax.lax.dynamic_update_slice(c["keys"], jnp.ones((b, 1), jnp.int32), (0, index))
        hidden, c["cache"] = model.decoder(model.decoder.embed(tok[:, None]), (pos0 + i)[:, None],
                                           c["keys"][:, None, :].astype(bool), g_decode, c["cache"], index,
                                           unrolled=_layers_for_step(layer_graphdef, layers))
        c["next_logits"] = model.logits(hidden[:, 0])
        c["i"] = i + 1
        return c

    def cond(c):
        return (c["i"] < n_new) & ~jnp.all(c["done"])

    carry = {
        "i": jnp.int32(0), "next_logits": logits0, "keys": keys,
        "cache": [KVCache(cache.k[i], cache.v[i]) for i in range(dec.num_hidden_layers)],
        "tokens": jnp.full((b, n_new), st.pad_id, jnp.int32), "lengths": jnp.zeros((b,), jnp.int32),
        "done": jnp.zeros((b,), bool), "presence": presence,
        "cstate": constraint.init_state() if constraint is not None else {},
        "logits": jnp.zeros((b, n_new, vocab) if st.return_logits else (0,), jnp.float32),
    }
    carry = jax.lax.while_loop(cond, body, carry)
    return carry["tokens"], carry["lengths"], (carry["logits"] if st.return_logits else None)


# --------------------------------------------------------------------------------------------
# Host wrapper
# --------------------------------------------------------------------------------------------

def split_mixed_batches(config: ModelConfig, backend: str | None = None) -> bool:
    """Whether `generate` runs a batch that mixes experts as one call per expert. On CPU it does:
    each row then costs one MLP (the in-graph mixed strategies cost up to E MLPs per decode
    step there); on GPU / TPU the batch stays whole and the layers route it (`routing`)."""
    return config.gmoe_dispatch == "auto" and (backend or jax.default_backend()) == "cpu"


def _left_align(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Moves each row's real tokens (mask 1) to the end, order kept (left padding)."""
    order = np.argsort(mask > 0, axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(mask, order, axis=1)


def _bucket(n: int, bucket: int | None) -> int:
    return n if not bucket else max(bucket, math.ceil(n / bucket) * bucket)


def generate(graphdef, params, input_ids, attention_mask=None, pixel_values=None, granularity=None, *,
             max_new_tokens: int, eos_ids: Sequence[int] | None = None, pad_id: int | None = None,
             sampling_params: SamplingParams | None = None, rng: jax.Array | int | None = None,
             constraint: C.Constraint | None = None, length_bucket: int | None = 64,
             return_logits: bool = False, mesh: Mesh | None = None, config: ModelConfig | None = None,
             **sampling_kwargs) -> GenerateOutput:
    """Generates up to `max_new_tokens` tokens for each prompt row.

    input_ids int [B, T] with one `config.image_token_id` per image (any padding side; rows are
    left-aligned here), attention_mask [B, T] (default all ones), pixel_values float32
    [B, N, S, S, 3] or None, granularity int [B] (default 0; `rsunivlm_jax.route` of each prompt).
    eos_ids / pad_id default to the config's. Decoding: `sampling_params` or keyword fields of
    `SamplingParams` (do_sample, temperature, top_k, top_p, repetition_penalty, penalize_prompt).
    rng: key or int seed for sampling. constraint: `constrained.box_constraint` / `mask_constraint`
    for this batch. mesh: shard the batch over all mesh axes (data parallel; params must already be
    placed on the mesh, e.g. replicated). Returns numpy `GenerateOutput`.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    config = config if config is not None else merge(graphdef, params).config
    sp = sampling_params if sampling_params is not None else SamplingParams()
    if sampling_kwargs:
        sp = sp.replace(**sampling_kwargs)
    ids = np.asarray(input_ids, np.int32)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
    b = ids.shape[0]
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    if (mask.sum(axis=1) == 0).any():
        raise ValueError(f"rows {np.flatnonzero(mask.sum(axis=1) == 0).tolist()} have no real token")
    gran = np.zeros((b,), np.int32) if granularity is None else np.asarray(granularity, np.int32).reshape(b)
    px = None if pixel_values is None or np.shape(pixel_values)[1] == 0 else pixel_values
    if constraint is not None:
        if constraint.batch_size != b:
            raise ValueError(f"constraint is for {constraint.batch_size} rows, batch has {b}")
        if np.shape(constraint.token_class)[0] != config.decoder.vocab_size:
            raise ValueError(f"constraint covers {np.shape(constraint.token_class)[0]} token ids, the model "
                             f"vocabulary has {config.decoder.vocab_size} rows")
        need = C.min_length(constraint)
        short = [int(r) for r in np.flatnonzero(np.asarray(constraint.rows["enabled"]) & (need > max_new_tokens))]
        if short:
            raise ValueError(f"max_new_tokens={max_new_tokens} cannot hold a complete constrained answer "
                             f"for rows {short} (shortest: {int(need[short[0]])} tokens)")

    groups = [np.arange(b)]
    homogeneous = config.gmoe.num_experts == 1 or len(set(gran.tolist())) == 1
    if not homogeneous and split_mixed_batches(config):
        groups = [np.flatnonzero(gran == v) for v in sorted(set(gran.tolist()))]  # one expert per call
    if len(groups) > 1:
        parts = [generate(graphdef, params, ids[rows], mask[rows], None if px is None else np.asarray(px)[rows],
                          gran[rows], max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                          sampling_params=sp, rng=rng, constraint=None if constraint is None else constraint.take(rows),
                          length_bucket=length_bucket, return_logits=return_logits, mesh=mesh, config=config)
                 for rows in groups]
        tokens = np.zeros((b, max_new_tokens), np.int32)
        lengths = np.zeros((b,), np.int32)
        logits = None
        for rows, part in zip(groups, parts):
            tokens[rows], lengths[rows] = part.tokens, part.lengths
            if return_logits:
                logits = np.zeros((b,) + part.logits.shape[1:], np.float32) if logits is None else logits
                logits[rows] = part.logits
        return GenerateOutput(tokens, lengths, logits)

    ids, mask = _left_align(ids, mask)
    t = _bucket(ids.shape[1], length_bucket)
    pad = config.pad_token_id if pad_id is None else int(pad_id)
    if t > ids.shape[1]:
        extra = t - ids.shape[1]
        ids = np.concatenate([np.full((b, extra), pad, np.int32), ids], axis=1)
        mask = np.concatenate([np.zeros((b, extra), np.int32), mask], axis=1)
    st = _Static(
        max_new_tokens=int(max_new_tokens),
        eos_ids=tuple(int(e) for e in (config.eos_token_ids if eos_ids is None else eos_ids)),
        pad_id=pad, sampling=sp,
        vocab_limit=config.tokenizer_vocab_size if config.tokenizer_vocab_size < config.decoder.vocab_size else None,
        return_logits=bool(return_logits), homogeneous=bool(homogeneous))
    key = jax.random.key(0 if rng is None else rng) if rng is None or isinstance(rng, int) else rng
    arrays = [ids, mask, None if px is None else np.asarray(px, np.float32), gran]
    con = constraint
    keep = b
    if mesh is not None:
        n_dev = mesh.size
        padded = -(-b // n_dev) * n_dev
        index = np.concatenate([np.arange(b), np.full((padded - b,), b - 1)]).astype(np.int64)
        arrays = [None if a is None else a[index] for a in arrays]
        con = None if con is None else con.take(index)
        sharding = NamedSharding(mesh, P(tuple(mesh.axis_names)))
        arrays = [None if a is None else jax.device_put(a, sharding) for a in arrays]
        if con is not None:
            con = dataclasses.replace(con, rows={k: jax.device_put(v, sharding) for k, v in con.rows.items()})
    tokens, lengths, logits = _generate_jit(graphdef, st, params, *arrays, key, con)
    tokens, lengths = np.asarray(tokens)[:keep], np.asarray(lengths)[:keep]
    return GenerateOutput(tokens, lengths, None if logits is None else np.asarray(logits)[:keep])


def answer_ids(out: GenerateOutput, eos_ids: Sequence[int]) -> list[list[int]]:
    """Each row's generated ids without the trailing eos and padding."""
    eos = set(int(e) for e in eos_ids)
    rows = []
    for toks, n in zip(out.tokens, out.lengths):
        ids = [int(t) for t in toks[:int(n)]]
        if ids and ids[-1] in eos:
            ids = ids[:-1]
        rows.append(ids)
    return rows


def decode_answers(tokenizer, out: GenerateOutput, eos_ids: Sequence[int]) -> list[str]:
    """Answer texts as the demo decodes them (`skip_special_tokens=True`, stripped)."""
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in answer_ids(out, eos_ids)]
