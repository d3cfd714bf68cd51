"""Stage 1 (dense) -> stage 2 (G-MoE) parameters: copy each layer's MLP into every expert.

The RSUniVLM authors initialised stage 2 from the "stage-1 model weights"; how the
experts were initialised is not published. We up-cycle: the dense
SwiGLU MLP of every decoder layer is copied into experts 0..E-1, so the stage-2 model computes
exactly the stage-1 function for every granularity until training separates the experts.

Also handled: a tied stage-1 model (LLaVA-OneVision-0.5B ties `lm_head` to `embed_tokens`) going to
the untied released layout (`lm_head/kernel = embed_tokens.T`), which again keeps the logits.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.train.optim import EXPERT_AXIS, EXPERT_PARAM, map_with_path

UNCHANGED_FIELDS = ("vision", "connector", "image_token_id", "pad_token_id")


def check_compatible(source: ModelConfig, target: ModelConfig) -> None:
    """Raises unless `target` differs from `source` only in the expert count and head tying."""
    problems = [f for f in UNCHANGED_FIELDS if getattr(source, f) != getattr(target, f)]
    untied = lambda d: dataclasses.replace(d, tie_word_embeddings=False)  # noqa: E731
    if untied(source.decoder) != untied(target.decoder):
        problems.append("decoder")
    if source.gmoe.num_experts not in (1, target.gmoe.num_experts):
        problems.append(f"gmoe.num_experts {source.gmoe.num_experts} -> {target.gmoe.num_experts} "
                        "(source must be dense or already have the target count)")
    if target.decoder.tie_word_embeddings and not source.decoder.tie_word_embeddings:
        problems.append("cannot tie an untied lm_head")
    if problems:
        raise ValueError("stage-1 -> stage-2 up-cycling needs identical architectures except for the number "
                         f"of experts and head tying; differs in: {problems}")


def upcycle(params: Any, source: ModelConfig, target: ModelConfig) -> dict:
    """Returns stage-2 parameters (same tree as `rs.abstract_init(target)`); pure, jit-able."""
    check_compatible(source, target)
    e = target.gmoe.num_experts

    def expand(path: str, x):
        if EXPERT_PARAM.fullmatch(path) and x.shape[EXPERT_AXIS] != e:
            reps = [1] * x.ndim
            reps[EXPERT_AXIS] = e  # source has one expert: copy it E times
            return jnp.tile(x, reps)
        return x

    out = map_with_path(expand, params)
    if source.decoder.tie_word_embeddings and not target.decoder.tie_word_embeddings:
        out = dict(out)
        out["lm_head"] = {"kernel": jnp.transpose(out["decoder"]["embed_tokens"]["embedding"])}
    return out


def upcycle_sharded(params: Any, source: ModelConfig, target: ModelConfig, target_shardings: Any | None = None) -> dict:
    """`upcycle` under `jax.jit`, writing straight into the stage-2 shardings when given."""
    fn = lambda p: upcycle(p, source, target)  # noqa: E731
    if target_shardings is None:
        return jax.jit(fn)(params)
    return jax.jit(fn, out_shardings=target_shardings)(params)
