"""Pure training and evaluation steps.

`make_train_step(...)` returns `train_step(state, batch) -> (state, metrics)`, a pure function for
`jax.jit` (the trainer adds in/out shardings and donates `state`). One call:

1. splits the global batch into `micro_batches` interleaved micro-batches (row r goes to
   micro-batch r % k, so every micro-batch stays spread over all data-parallel devices) and runs
   them in a `lax.scan`, summing gradients of `loss_sum / N`, where N is the number of target
   tokens in the whole global batch: the update equals the one of the big batch;
2. differentiates only the trainable parameters (frozen ones enter through `stop_gradient`);
3. applies the optax update (clipping, per-part AdamW, frozen parts untouched);
4. G-MoE: every row runs its own expert, exactly (`rsunivlm_jax.routing`). With
   `expert_update="selected"`, expert slices that no row of the batch was routed to keep their
   weights AND their optimiser moments (no decay, no momentum drift), as in the PyTorch reference
   where unused experts get no `.grad` and AdamW skips them. With `homogeneous_batches=True` (the
   pipeline groups batches by granularity) and the model config given, the step works on the
   batch's expert alone: it slices that expert out of the stacked kernels and their Adam moments,
   differentiates and updates a one-expert model and writes the slice back (no gradient buffers
   for the other experts). A batch that mixes experts is then refused in the step (no update,
   `mixed_granularity` = 1), and the trainer stops with an error naming the rows;
5. NaN/Inf guard: if the loss or the gradient norm is not finite, parameters and optimiser state
   stay as they were, the skip is counted (`nonfinite_total`, `nonfinite_run` = skips in a row).

Mixed precision: parameters (and so gradients and moments) are float32 (`param_dtype`); the model
casts weights to the configured compute `dtype` (e.g. bfloat16) inside its layers, and keeps norms,
softmax and logits in float32.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax import traverse_util
from jax.sharding import Mesh

from rsunivlm_jax import sharding as shd
from rsunivlm_jax.functional import merge
from rsunivlm_jax.train import loss as loss_lib
from rsunivlm_jax import routing
from rsunivlm_jax.train.optim import Optimizer, map_state_params

Batch = Mapping[str, jax.Array]
BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask", "pixel_values", "num_images", "granularity")


class TrainState(struct.PyTreeNode):
    """Everything a step changes. `step` counts consumed batches, `opt_step` applied updates."""

    step: jax.Array
    params: Any
    opt_state: Any
    opt_step: jax.Array
    nonfinite_total: jax.Array
    nonfinite_run: jax.Array

    def counters(self) -> dict:
        return {"step": self.step, "opt_step": self.opt_step, "nonfinite_total": self.nonfinite_total,
                "nonfinite_run": self.nonfinite_run}

    @classmethod
    def from_parts(cls, params, opt_state, counters: Mapping[str, Any]) -> "TrainState":
        return cls(params=params, opt_state=opt_state, **{k: counters[k] for k in
                                                          ("step", "opt_step", "nonfinite_total", "nonfinite_run")})


def init_state(params: Any, optimizer: Optimizer) -> TrainState:
    zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731  (distinct buffers: the state is donated)
    return TrainState(step=zero(), params=params, opt_state=optimizer.tx.init(params), opt_step=zero(),
                      nonfinite_total=zero(), nonfinite_run=zero())


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(tree, sep="/")


def _unflat(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def _split_micro(batch: Batch, k: int) -> Batch:
    """`[B, ...]` -> `[k, B / k, ...]`; micro-batch j holds rows j, j + k, j + 2k, ..."""
    def split(x):
        b = x.shape[0]
        if b % k:
            raise ValueError(f"global batch {b} is not divisible by micro_batches={k}")
        y = jnp.swapaxes(x.reshape((b // k, k) + x.shape[1:]), 0, 1)
        return shd.constrain(y, (None, "batch") + (None,) * (x.ndim - 1))
    return {key: split(v) for key, v in batch.items()}


def make_loss_fn(graphdef, *, num_experts: int, num_granularities: int | None = None) -> Callable:
    """`loss_fn(params, batch) -> LossStats` (sums; the model runs with `output="text"`).

    Each row runs expert `batch["granularity"]`; the statistics are kept per granularity
    (`num_granularities`, default `num_experts`). A model with one expert (`num_experts=1`, e.g.
    the selected slice of a G-MoE) runs it for every row."""
    n_gran = num_granularities or max(num_experts, 1)

    def loss_fn(params, batch: Batch) -> loss_lib.LossStats:
        model = merge(graphdef, params)
        g = jnp.clip(batch["granularity"].astype(jnp.int32), 0, n_gran - 1)
        g_model = g if num_experts > 1 else jnp.zeros_like(g)
        logits = model(batch["input_ids"], batch["pixel_values"], g_model, batch["attention_mask"], output="text")
        return loss_lib.cross_entropy_stats(logits, batch["input_ids"], batch["loss_mask"], g, n_gran)
    return loss_fn


def make_grad_fn(graphdef, trainable: Mapping[str, bool], *, num_experts: int, micro_batches: int = 1, num_granularities: int | None = None
                 ) -> Callable[[Any, Batch], tuple[Any, loss_lib.LossStats]]:
    """`grad_fn(params, batch) -> (grads, stats)`: gradient of `loss_sum / N_global` (N = target
    tokens of the whole batch) w.r.t. the trainable parameters, accumulated over `micro_batches`;
    frozen entries of `grads` are zeros. `trainable` maps flat paths (``a/b/c``) to bools."""
    n_gran = num_granularities or max(num_experts, 1)
    loss_fn = make_loss_fn(graphdef, num_experts=num_experts, num_granularities=n_gran)

    def grads_and_stats(params, batch):
        flat = _flat(params)
        train_p = {k: v for k, v in flat.items() if trainable[k]}
        frozen_p = {k: jax.lax.stop_gradient(v) for k, v in flat.items() if not trainable[k]}
        total = jnp.maximum(loss_lib.num_targets(batch["loss_mask"]), 1.0)

        def objective(tp, mb):
            stats = loss_fn(_unflat({**tp, **frozen_p}), mb)
            return stats.loss_sum / total, stats

        grad_fn = jax.grad(objective, has_aux=True)
        if micro_batches == 1:
            grads, stats = grad_fn(train_p, batch)
        else:
            def body(carry, mb):
                acc, acc_stats = carry
                g, s = grad_fn(train_p, mb)
                return (jax.tree.map(jnp.add, acc, g), acc_stats + s), None

            init = (jax.tree.map(jnp.zeros_like, train_p), loss_lib.LossStats.zeros(n_gran))
            (grads, stats), _ = jax.lax.scan(body, init, _split_micro(batch, micro_batches))
        full = {k: grads[k] if trainable[k] else jnp.zeros_like(v) for k, v in flat.items()}
        return _unflat(full), stats

    return grads_and_stats


def _single_expert_graphdef(model_config):
    from rsunivlm_jax.functional import abstract_model
    return abstract_model(model_config.replace(gmoe={"num_experts": 1}))[0]


def make_train_step(graphdef, optimizer: Optimizer, *, num_experts: int, micro_batches: int = 1,
                    expert_update: str = "selected", model_config=None, homogeneous_batches: bool = False,
                    mesh: Mesh | None = None, rules=None) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """Builds the pure train step (see module docstring). `mesh`/`rules` activate the model's
    activation sharding constraints while tracing (pass them when jitting over a mesh).

    With `model_config` given, `homogeneous_batches=True` and `expert_update="selected"`, the step
    works on the batch's expert slice only: it slices expert g out of the stacked kernels and their
    Adam moments, differentiates and updates a one-expert model, and writes the slice back. Same
    result as the full path, without gradients or optimiser work for the unrouted experts; a mixed
    batch is not applied (`mixed_granularity` = 1 in the metrics).
    """
    if expert_update not in ("selected", "all"):
        raise ValueError(f"expert_update={expert_update!r}; expected 'selected' or 'all'")
    if micro_batches < 1:
        raise ValueError(f"micro_batches={micro_batches} must be >= 1")
    n_gran = max(num_experts, 1)
    trainable = optimizer.trainable
    tx = optimizer.tx
    sliced = (model_config is not None and num_experts > 1 and expert_update == "selected"
              and homogeneous_batches)
    if sliced:
        grads_and_stats = make_grad_fn(_single_expert_graphdef(model_config), trainable, num_experts=1,
                                       micro_batches=micro_batches, num_granularities=n_gran)
    else:
        grads_and_stats = make_grad_fn(graphdef, trainable, num_experts=num_experts, micro_batches=micro_batches)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        batch = {k: batch[k] for k in BATCH_KEYS}
        routed = jnp.clip(batch["granularity"].astype(jnp.int32), 0, n_gran - 1)
        batch["granularity"] = routed
        selected = jnp.any(jax.nn.one_hot(routed, n_gran, dtype=jnp.bool_), axis=0)  # [E]
        mixed = jnp.any(routed != routed[0])

        params, opt_state = state.params, state.opt_state
        axes = routing.expert_axes(graphdef, params) if num_experts > 1 else jax.tree.map(lambda _: -1, params)
        state_axes = map_state_params(lambda _, ax: ax, opt_state, axes, lambda _: -1, params)
        if sliced:  # work on expert g's slice of every stacked expert kernel (and its moments)
            g = routed[0]
            params = routing.take_expert(params, axes, g)
            opt_state = routing.take_expert(opt_state, state_axes, g)

        grads, stats = grads_and_stats(params, batch)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(stats.loss_sum) & jnp.isfinite(grad_norm)
        apply = finite & ~mixed if sliced else finite

        def update(operands):
            params, opt_state, grads = operands
            # The norm computed above (for the NaN guard and the metrics) is reused by the clipping.
            updates, new_opt = tx.update(grads, opt_state, params, global_norm=grad_norm)
            if expert_update == "selected" and num_experts > 1 and not sliced:
                def keep_mask(ax, ndim):
                    shape = [1] * ndim
                    shape[ax] = n_gran
                    return selected.reshape(shape)

                updates = jax.tree.map(lambda u, ax: u if ax < 0 else jnp.where(keep_mask(ax, u.ndim), u, 0),
                                       updates, axes)
                new_opt = jax.tree.map(
                    lambda new, old, ax: new if ax < 0 else jnp.where(keep_mask(ax, new.ndim), new, old),
                    new_opt, opt_state, state_axes)
            flat_p, flat_u = _flat(params), _flat(updates)
            new_params = _unflat({k: (flat_p[k] + flat_u[k].astype(flat_p[k].dtype)) if trainable[k] else flat_p[k]
                                  for k in flat_p})
            return new_params, new_opt

        # NaN/Inf guard as a branch rather than `where(finite, new, old)` over every leaf: the
        # update can then run in place on the donated buffers (no second copy of parameters and
        # moments, no extra select pass over them; docs/profiling.md).
        new_params, new_opt = jax.lax.cond(apply, update, lambda operands: operands[:2],
                                           (params, opt_state, grads))
        if sliced:
            new_params = routing.put_expert(state.params, new_params, axes, g)
            new_opt = routing.put_expert(state.opt_state, new_opt, state_axes, g)
        skipped = (~apply).astype(jnp.int32)
        new_state = TrainState(
            step=state.step + 1, params=new_params, opt_state=new_opt,
            opt_step=state.opt_step + (1 - skipped),
            nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
            nonfinite_run=jnp.where(finite, 0, state.nonfinite_run + 1))
        metrics = {
            "loss": loss_lib.mean_loss(stats), "loss_sum": stats.loss_sum, "num_targets": stats.num_targets,
            "gran_loss_sum": stats.gran_loss_sum, "gran_targets": stats.gran_targets,
            "grad_norm": grad_norm, "learning_rate": optimizer.learning_rate(state.opt_step),
            "skipped": skipped, "nonfinite_total": new_state.nonfinite_total,
            "nonfinite_run": new_state.nonfinite_run, "selected_experts": selected.astype(jnp.int32),
            "mixed_granularity": mixed.astype(jnp.int32),
            "real_tokens": jnp.sum(batch["attention_mask"]).astype(jnp.float32),
            "num_images": jnp.sum(batch["num_images"]).astype(jnp.float32),
        }
        return new_state, metrics

    if mesh is None:
        return step

    def sharded_step(state, batch):
        with shd.use_sharding(mesh, rules):
            return step(state, batch)
    return sharded_step


def make_eval_step(graphdef, *, num_experts: int, mesh: Mesh | None = None,
                   rules=None) -> Callable[[Any, Batch], loss_lib.LossStats]:
    """`eval_step(params, batch) -> LossStats` (sums; add them over batches, then normalise).
    Every row runs its own expert."""
    loss_fn = make_loss_fn(graphdef, num_experts=num_experts)

    def step(params, batch):
        batch = {k: batch[k] for k in BATCH_KEYS}
        if mesh is None:
            return loss_fn(params, batch)
        with shd.use_sharding(mesh, rules):
            return loss_fn(params, batch)
    return step
