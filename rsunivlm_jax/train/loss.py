"""Next-token cross-entropy over the loss mask, as sums (normalised by the caller).

Counterpart: the `CrossEntropyLoss(ignore_index=-100)` of `LlavaQwenGMoEForCausalLM.forward`, with
one difference that matters for batching: the reference averages over the target tokens of its
(per-device) micro-batch, while here the step divides the summed loss by the number of target
tokens in the GLOBAL batch (all devices, all micro-batches). Every target token then weighs the
same, and gradient accumulation gives exactly the gradient of the big batch.

Conventions (batch contract in docs/data.md): `logits[:, t]` (from `forward(..., output="text")`)
predicts `input_ids[:, t + 1]`; `loss_mask[:, t]` weighs token t as a target. So the pair
(logits[:, t], input_ids[:, t + 1]) is weighted by `loss_mask[:, t + 1]`.

Weighting (`train.loss_weighting`, applied to the batches by the data side, `weight_loss_mask`):
"token" keeps every target token at weight 1 (the reference); "sample" gives each example a
total weight of 1, so a one-token class name counts as much as a 200-token mask; "sqrt" gives
each example sqrt(#targets) (InternVL 2.5's square averaging). The step still divides by the
summed weights of the global batch.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

LOSS_WEIGHTINGS = ("token", "sample", "sqrt")


class LossStats(NamedTuple):
    """Summed statistics of one batch; everything adds up over micro-batches and devices."""

    loss_sum: jax.Array  # f32[]: sum of token cross-entropies over target tokens
    num_targets: jax.Array  # f32[]: number of target tokens
    gran_loss_sum: jax.Array  # f32[E]: loss_sum per granularity (expert index)
    gran_targets: jax.Array  # f32[E]: num_targets per granularity

    def __add__(self, other: "LossStats") -> "LossStats":  # type: ignore[override]
        return LossStats(*(a + b for a, b in zip(self, other)))

    @staticmethod
    def zeros(num_granularities: int) -> "LossStats":
        z = jnp.zeros((), jnp.float32)
        e = jnp.zeros((num_granularities,), jnp.float32)
        return LossStats(z, z, e, e)


def num_targets(loss_mask: jax.Array) -> jax.Array:
    """Target tokens of a batch: `loss_mask[:, 1:]` (token 0 has no predecessor)."""
    return jnp.sum(loss_mask[:, 1:].astype(jnp.float32))


def token_cross_entropy(logits: jax.Array, input_ids: jax.Array) -> jax.Array:
    """`[B, T, V]` logits, `[B, T]` ids -> `[B, T - 1]` CE of predicting token t + 1 at t (float32)."""
    logits = logits[:, :-1].astype(jnp.float32)
    targets = input_ids[:, 1:]
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return lse - picked


def cross_entropy_stats(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array,
                        granularity: jax.Array, num_granularities: int) -> LossStats:
    """Summed next-token CE over `loss_mask`, overall and per granularity (`granularity int32[B]`)."""
    weights = loss_mask[:, 1:].astype(jnp.float32)
    ce = token_cross_entropy(logits, input_ids)
    per_example = jnp.sum(ce * weights, axis=1)
    per_example_targets = jnp.sum(weights, axis=1)
    g = jnp.clip(granularity.astype(jnp.int32), 0, num_granularities - 1)
    return LossStats(
        loss_sum=jnp.sum(per_example),
        num_targets=jnp.sum(per_example_targets),
        gran_loss_sum=jax.ops.segment_sum(per_example, g, num_segments=num_granularities),
        gran_targets=jax.ops.segment_sum(per_example_targets, g, num_segments=num_granularities),
    )


def mean_loss(stats: LossStats) -> jax.Array:
    """Loss per target token (0 when the batch has no target)."""
    return stats.loss_sum / jnp.maximum(stats.num_targets, 1.0)


def granularity_means(stats: LossStats) -> jax.Array:
    """`f32[E]` loss per target token for each granularity (NaN where it had no target)."""
    return jnp.where(stats.gran_targets > 0, stats.gran_loss_sum / jnp.maximum(stats.gran_targets, 1.0), jnp.nan)


def weight_loss_mask(loss_mask: np.ndarray, mode: str) -> np.ndarray:
    """Per-example target weights for a host batch's `loss_mask [B, T]` (numpy; see the module doc).

    "token": unchanged; "sample": each example's targets sum to 1; "sqrt": each sums to sqrt(#targets).
    """
    if mode not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss weighting must be one of {LOSS_WEIGHTINGS}, got {mode!r}")
    mask = np.asarray(loss_mask, np.float32)
    if mode == "token":
        return mask
    n = mask[:, 1:].sum(axis=1, keepdims=True)  # position 0 is never a target
    scale = 1.0 / np.maximum(n, 1.0) if mode == "sample" else 1.0 / np.sqrt(np.maximum(n, 1.0))
    return (mask * scale).astype(np.float32)
