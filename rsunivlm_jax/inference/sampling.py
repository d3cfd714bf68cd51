"""Logits processors with transformers `generate` semantics, and token choice (greedy / sampling).

Order per step, as `GenerationMixin._get_logits_processor` builds it:

    RepetitionPenaltyLogitsProcessor            (greedy and sampling)
    [constraint mask, PrefixConstrainedLogitsProcessor's slot]
    TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper   (sampling only)
    argmax (greedy) | categorical draw (sampling)

Before all of them, rows of the logits beyond the tokenizer length are set to -inf (the reference drops them).
The functions work on float32 `[B, V]` logits; the repetition penalty takes a boolean
`presence [B, V]` ("token already seen") instead of the id history, which is equivalent.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Decoding knobs, named as in transformers' `GenerationConfig`.

    do_sample=False is greedy decoding; temperature / top_k / top_p are then ignored (as in
    transformers), while repetition_penalty still applies. top_k=0 and top_p=1.0 disable them.
    penalize_prompt: True counts the prompt's tokens as seen (transformers `generate(input_ids=...)`);
    False penalises only generated tokens, which is what LLaVA's `generate(inputs_embeds=...)`
    (the RSUniVLM demo) does.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    penalize_prompt: bool = True

    def __post_init__(self):
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def replace(self, **kwargs) -> "SamplingParams":
        return dataclasses.replace(self, **kwargs)


def mask_vocab(logits: jax.Array, limit: int | None) -> jax.Array:
    """-inf for ids >= `limit` (embedding rows the tokenizer never produces)."""
    if limit is None or limit >= logits.shape[-1]:
        return logits
    return jnp.where(jnp.arange(logits.shape[-1]) < limit, logits, NEG_INF)


def repetition_penalty(logits: jax.Array, presence: jax.Array, penalty: float) -> jax.Array:
    """transformers `RepetitionPenaltyLogitsProcessor`: seen tokens' logits x penalty if < 0, / penalty else."""
    if penalty == 1.0:
        return logits
    penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(presence, penalised, logits)


def temperature(logits: jax.Array, t: float) -> jax.Array:
    """transformers `TemperatureLogitsWarper`."""
    return logits if t == 1.0 else logits / t


def top_k(logits: jax.Array, k: int) -> jax.Array:
    """transformers `TopKLogitsWarper`: drop logits below the k-th largest (ties at the k-th are kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, NEG_INF, logits)


def top_p(logits: jax.Array, p: float) -> jax.Array:
    """transformers `TopPLogitsWarper` (min_tokens_to_keep=1).

    Sort ascending, drop the prefix whose cumulative probability is <= 1 - p, always keep the
    largest. Implemented with the smallest kept logit as a threshold (identical unless logits tie
    exactly at the threshold).
    """
    if p >= 1.0:
        return logits
    ordered = jnp.sort(logits, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1)
    removed = jnp.sum(cum <= 1.0 - p, axis=-1, keepdims=True)
    removed = jnp.minimum(removed, logits.shape[-1] - 1)
    threshold = jnp.take_along_axis(ordered, removed, axis=-1)
    return jnp.where(logits < threshold, NEG_INF, logits)


def process(logits: jax.Array, presence: jax.Array | None, params: SamplingParams,
            allowed: jax.Array | None = None) -> jax.Array:
    """All processors in transformers order; `allowed` (bool [B, V]) is a constraint mask."""
    logits = logits.astype(jnp.float32)
    if presence is not None:
        logits = repetition_penalty(logits, presence, params.repetition_penalty)
    if allowed is not None:
        logits = jnp.where(allowed, logits, NEG_INF)
    if params.do_sample:
        logits = temperature(logits, params.temperature)
        logits = top_k(logits, params.top_k)
        logits = top_p(logits, params.top_p)
    return logits


def _chunked(x: jax.Array, chunk: int, fill) -> jax.Array:
    """[B, V] -> [B, ceil(V / chunk), chunk], padded with `fill`."""
    b, v = x.shape
    n = -(-v // chunk)
    return jnp.pad(x, ((0, 0), (0, n * chunk - v)), constant_values=fill).reshape(b, n, chunk)


def argmax(logits: jax.Array, chunk: int = 256) -> jax.Array:
    """First index of the maximum per row (`jnp.argmax` semantics), as chunk maxima + one chunk's argmax:
    XLA:CPU's variadic argmax reduce over a 150k vocabulary is several times slower."""
    parts = _chunked(logits, chunk, -jnp.inf)
    j = jnp.argmax(jnp.max(parts, axis=-1), axis=-1)
    inner = jnp.take_along_axis(parts, j[:, None, None], axis=1)[:, 0]
    return (j * chunk + jnp.argmax(inner, axis=-1)).astype(jnp.int32)


def categorical(key: jax.Array, logits: jax.Array, chunk: int = 256) -> jax.Array:
    """One draw per row from softmax(logits) (torch.multinomial's distribution) by inverse CDF.

    One uniform per row instead of one Gumbel per vocabulary entry (threefry over 150k entries
    dominates a CPU decode step): pick a chunk by the cumulative chunk masses, then the entry
    inside it. Entries with -inf logits are never drawn.
    """
    b = logits.shape[0]
    weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    parts = _chunked(weights, chunk, 0.0)
    mass = jnp.sum(parts, axis=-1)  # [B, n]
    cum = jnp.cumsum(mass, axis=-1)
    u = (1.0 - jax.random.uniform(key, (b, 1), jnp.float32)) * cum[:, -1:]  # in (0, total]
    j = jnp.minimum(jnp.sum(cum < u, axis=-1), mass.shape[1] - 1)
    m_j = jnp.take_along_axis(mass, j[:, None], axis=1)
    frac = (u - (jnp.take_along_axis(cum, j[:, None], axis=1) - m_j)) / jnp.maximum(m_j, 1e-38)
    inner = jnp.cumsum(jnp.take_along_axis(parts, j[:, None, None], axis=1)[:, 0], axis=-1)
    u_in = jnp.clip(frac, 1e-7, 1.0) * inner[:, -1:]
    k = jnp.minimum(jnp.sum(inner < u_in, axis=-1), chunk - 1)
    return (j * chunk + k).astype(jnp.int32)


def choose(logits: jax.Array, params: SamplingParams, key: jax.Array | None) -> jax.Array:
    """Processed logits [B, V] -> token ids int32 [B]: argmax (first on ties) or a categorical draw."""
    if not params.do_sample:
        return argmax(logits)
    return categorical(key, logits)


# --------------------------------------------------------------------------------------------
# generation_config.json
# --------------------------------------------------------------------------------------------

def from_generation_config(config: Mapping[str, Any], **overrides) -> tuple[SamplingParams, dict]:
    """A transformers `generation_config.json` dict -> (SamplingParams, extras).

    extras holds ``eos_token_ids`` (tuple), ``pad_token_id`` and ``max_new_tokens`` when present.
    Sampling fields are read as transformers reads them (do_sample defaults to False; greedy
    ignores temperature / top_k / top_p but honours repetition_penalty). `overrides` win.
    """
    def get(name, default):
        v = config.get(name)
        return default if v is None else v

    fields = dict(do_sample=bool(get("do_sample", False)), temperature=float(get("temperature", 1.0)),
                  top_k=int(get("top_k", 0)), top_p=float(get("top_p", 1.0)),
                  repetition_penalty=float(get("repetition_penalty", 1.0)))
    fields.update({k: v for k, v in overrides.items() if v is not None})
    extras: dict[str, Any] = {}
    eos = config.get("eos_token_id")
    if eos is not None:
        extras["eos_token_ids"] = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    if config.get("pad_token_id") is not None:
        extras["pad_token_id"] = int(config["pad_token_id"])
    if config.get("max_new_tokens") is not None:
        extras["max_new_tokens"] = int(config["max_new_tokens"])
    return SamplingParams(**fields), extras


def load_generation_config(directory: str | os.PathLike, **overrides) -> tuple[SamplingParams, dict]:
    """Reads ``<directory>/generation_config.json`` if present (else defaults: greedy, no penalty)."""
    path = Path(directory) / "generation_config.json"
    if not path.is_file():
        return from_generation_config({}, **overrides)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return from_generation_config(config, **overrides)
