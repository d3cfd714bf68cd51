"""LoRA train and eval steps: the frozen base is an argument, only the adapters are state.

`make_train_step(...)` returns `step(state, base, batch) -> (state, metrics)` where
`state.params` is the adapter tree (`rsunivlm_jax.lora.adapters`) and `base` the model's own
parameters, passed (not donated, never differentiated) at every call, so the base exists once in
memory, in any dtype (e.g. bfloat16), and is not part of checkpoints. Semantics as
`rsunivlm_jax.train.step`: the gradient of `loss_sum / N` (N = target tokens of the global batch)
accumulated over interleaved micro-batches; global-norm clipping and AdamW through the optax
transformation of `rsunivlm_jax.train.optim`; a non-finite loss or gradient skips the update
(counted); with `expert_update="selected"` the adapters of experts no row was routed to keep their
weights and their optimiser moments (as the full-model step does with expert kernels).
Adapter dropout draws its masks from `dropout_seed`, the step number and the module, so a resumed
run draws the same masks.

Metrics carry the same names as the full-model step, so the trainer logs both alike.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rsunivlm_jax import sharding as shd
from rsunivlm_jax.functional import merge as merge_module
from rsunivlm_jax.lora import adapters as adapters_lib
from rsunivlm_jax.train import loss as loss_lib
from rsunivlm_jax.train.optim import Optimizer, map_state_params
from rsunivlm_jax.train.step import BATCH_KEYS, TrainState

Batch = Mapping[str, jax.Array]


def _split_micro(batch: Batch, k: int) -> Batch:
    """`[B, ...]` -> `[k, B / k, ...]`; micro-batch j holds rows j, j + k, ... (as the full-model step)."""
    def split(x):
        b = x.shape[0]
        if b % k:
            raise ValueError(f"global batch {b} is not divisible by micro_batches={k}")
        y = jnp.swapaxes(x.reshape((b // k, k) + x.shape[1:]), 0, 1)
        return shd.constrain(y, (None, "batch") + (None,) * (x.ndim - 1))
    return {key: split(v) for key, v in batch.items()}


def routed(granularity: jax.Array, num_experts: int) -> jax.Array:
    """Each row's expert (clipped to the model's experts)."""
    return jnp.clip(granularity.astype(jnp.int32), 0, max(num_experts, 1) - 1)


def make_loss_fn(graphdef, *, num_experts: int) -> Callable:
    """`loss_fn(adapters, base, batch, dropout_key) -> LossStats` (sums; the model runs `output="text"`)."""
    n_gran = max(num_experts, 1)

    def loss_fn(adapters, base, batch: Batch, key) -> loss_lib.LossStats:
        model = merge_module(graphdef, adapters_lib.combine(base, adapters))
        g = routed(batch["granularity"], num_experts)
        with adapters_lib.dropout_key(key):
            logits = model(batch["input_ids"], batch["pixel_values"], g, batch["attention_mask"], output="text")
        return loss_lib.cross_entropy_stats(logits, batch["input_ids"], batch["loss_mask"], g, n_gran)
    return loss_fn


def make_train_step(graphdef, optimizer: Optimizer, *, num_experts: int, expert_axes: Any, micro_batches: int = 1,
                    expert_update: str = "selected", dropout: bool = False, dropout_seed: int = 0,
                    mesh: Mesh | None = None, rules=None) -> Callable:
    """The pure LoRA step (see the module docstring). `expert_axes`: int tree like the adapters, the
    expert axis of each expert adapter and -1 elsewhere (`rsunivlm_jax.lora.train.expert_axes`)."""
    if expert_update not in ("selected", "all"):
        raise ValueError(f"expert_update={expert_update!r}; expected 'selected' or 'all'")
    if micro_batches < 1:
        raise ValueError(f"micro_batches={micro_batches} must be >= 1")
    n_gran = max(num_experts, 1)
    loss_fn = make_loss_fn(graphdef, num_experts=num_experts)
    tx = optimizer.tx
    base_key = jax.random.key(int(dropout_seed))

    def grads_and_stats(adapters, base, batch, step_no):
        total = jnp.maximum(loss_lib.num_targets(batch["loss_mask"]), 1.0)

        def objective(ad, mb, j):
            key = jax.random.fold_in(jax.random.fold_in(base_key, step_no), j) if dropout else None
            stats = loss_fn(ad, base, mb, key)
            return stats.loss_sum / total, stats

        grad_fn = jax.grad(objective, has_aux=True)
        if micro_batches == 1:
            return grad_fn(adapters, batch, 0)

        def body(carry, inputs):
            acc, acc_stats = carry
            mb, j = inputs
            g, s = grad_fn(adapters, mb, j)
            return (jax.tree.map(jnp.add, acc, g), acc_stats + s), None

        init = (jax.tree.map(jnp.zeros_like, adapters), loss_lib.LossStats.zeros(n_gran))
        (grads, stats), _ = jax.lax.scan(body, init, (_split_micro(batch, micro_batches), jnp.arange(micro_batches)))
        return grads, stats

    def step(state: TrainState, base, batch: Batch) -> tuple[TrainState, dict]:
        batch = {k: batch[k] for k in BATCH_KEYS}
        g = routed(batch["granularity"], num_experts)
        selected = jnp.any(jax.nn.one_hot(g, n_gran, dtype=jnp.bool_), axis=0)  # [E]
        grads, stats = grads_and_stats(state.params, base, batch, state.step)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(stats.loss_sum) & jnp.isfinite(grad_norm)
        params, opt_state = state.params, state.opt_state
        state_axes = map_state_params(lambda _, ax: ax, opt_state, expert_axes, lambda _: -1, params)

        def update(operands):
            params, opt_state, grads = operands
            updates, new_opt = tx.update(grads, opt_state, params, global_norm=grad_norm)
            if expert_update == "selected" and num_experts > 1:
                def keep(ax, ndim):
                    shape = [1] * ndim
                    shape[ax] = n_gran
                    return selected.reshape(shape)

                updates = jax.tree.map(lambda u, ax: u if ax < 0 else jnp.where(keep(ax, u.ndim), u, 0),
                                       updates, expert_axes)
                new_opt = jax.tree.map(lambda new, old, ax: new if ax < 0 else jnp.where(keep(ax, new.ndim), new, old),
                                       new_opt, opt_state, state_axes)
            return optax.apply_updates(params, updates), new_opt

        new_params, new_opt = jax.lax.cond(finite, update, lambda operands: operands[:2], (params, opt_state, grads))
        skipped = (~finite).astype(jnp.int32)
        new_state = TrainState(step=state.step + 1, params=new_params, opt_state=new_opt,
                               opt_step=state.opt_step + (1 - skipped), nonfinite_total=state.nonfinite_total + skipped,
                               nonfinite_run=jnp.where(finite, 0, state.nonfinite_run + 1))
        metrics = {
            "loss": loss_lib.mean_loss(stats), "loss_sum": stats.loss_sum, "num_targets": stats.num_targets,
            "gran_loss_sum": stats.gran_loss_sum, "gran_targets": stats.gran_targets,
            "grad_norm": grad_norm, "learning_rate": optimizer.learning_rate(state.opt_step),
            "skipped": skipped, "nonfinite_total": new_state.nonfinite_total,
            "nonfinite_run": new_state.nonfinite_run, "selected_experts": selected.astype(jnp.int32),
            "mixed_granularity": jnp.any(g != g[0]).astype(jnp.int32),
            "real_tokens": jnp.sum(batch["attention_mask"]).astype(jnp.float32),
            "num_images": jnp.sum(batch["num_images"]).astype(jnp.float32),
        }
        return new_state, metrics

    if mesh is None:
        return step

    def sharded_step(state, base, batch):
        with shd.use_sharding(mesh, rules):
            return step(state, base, batch)
    return sharded_step


def make_eval_step(graphdef, *, num_experts: int, mesh: Mesh | None = None, rules=None) -> Callable:
    """`eval_step(adapters, base, batch) -> LossStats` (no dropout)."""
    loss_fn = make_loss_fn(graphdef, num_experts=num_experts)

    def step(adapters, base, batch):
        batch = {k: batch[k] for k in BATCH_KEYS}
        if mesh is None:
            return loss_fn(adapters, base, batch, None)
        with shd.use_sharding(mesh, rules):
            return loss_fn(adapters, base, batch, None)
    return step
