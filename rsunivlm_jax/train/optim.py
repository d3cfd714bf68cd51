"""Optimiser: AdamW, warm-up + cosine schedule, global-norm clipping, weight-decay mask, per-part
learning rates and trainable-part selection.

Counterpart: the LLaVA-NeXT trainer (`LLaVATrainer.create_optimizer`): parameter groups with and
without decay, `mm_projector_lr` / `mm_vision_tower_lr`, `mm_tunable_parts`, and HF's
`get_cosine_schedule_with_warmup`.

Structure of the optax transformation::

    chain(clip_by_global_norm(clip),
          multi_transform({"vision": adamw(lr_v * shape), "connector": adamw(lr_c * shape),
                           "decoder": adamw(lr_d * shape), "frozen": set_to_zero()}, labels))

* Parts: `vision/...` -> vision, `connector/...` -> connector, `decoder/...` and `lm_head/...` ->
  decoder. Each part has its own peak learning rate (default: `lr`), all share the schedule shape.
* Trainable selection: a parameter is trained when its path (``decoder/layers/mlp/up_proj/kernel``)
  fully matches one of the `trainable` regexes. Frozen parameters are labelled ``frozen``; the
  part transformations only see masked trees, so frozen parameters have NO optimiser state
  (`optax.MaskedNode` placeholders), and `train_step` never differentiates them.
* Weight decay (decoupled, AdamW) applies except to paths matching `no_decay` (norm scales and
  biases, token / position embeddings, the `image_newline` vector).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

log = logging.getLogger(__name__)

PARTS = ("vision", "connector", "decoder")
FROZEN = "frozen"
PART_OF_ROOT = {"vision": "vision", "connector": "connector", "decoder": "decoder", "lm_head": "decoder"}
DEFAULT_NO_DECAY = (r".*/bias", r".*norm[^/]*/.*", r".*embed_tokens/.*", r".*position_embedding/.*",
                    r"connector/image_newline")
# Stacked G-MoE expert kernels `[L, E, ...]`: axis 1 is the expert axis.
EXPERT_PARAM = re.compile(r"decoder/layers/mlp/(gate|up|down)_proj/kernel")
EXPERT_AXIS = 1


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    """Resolved optimiser settings (see configs/common.py `optim` for the meaning of each)."""

    total_steps: int
    lr: float = 1e-5
    vision_lr: float | None = None
    connector_lr: float | None = None
    decoder_lr: float | None = None
    name: str = "adamw"  # "adamw" or "sgd" (stateless; benchmarks that cannot hold Adam moments)
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip: float | None = 1.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    trainable: tuple[str, ...] = (".*",)
    no_decay: tuple[str, ...] = DEFAULT_NO_DECAY

    def part_lr(self, part: str) -> float:
        value = getattr(self, f"{part}_lr")
        return self.lr if value is None else float(value)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], total_steps: int) -> "OptimSpec":
        """From the `optim` section of an experiment config (warm-up from steps or a ratio)."""
        warmup = cfg.get("warmup_steps")
        if warmup is None:
            warmup = int(math.ceil(float(cfg.get("warmup_ratio", 0.0)) * total_steps))
        clip = cfg.get("clip")
        return cls(
            total_steps=int(total_steps), lr=float(cfg["lr"]),
            vision_lr=cfg.get("vision_lr"), connector_lr=cfg.get("connector_lr"), decoder_lr=cfg.get("decoder_lr"),
            name=str(cfg.get("name", "adamw")), b1=float(cfg.get("b1", 0.9)), b2=float(cfg.get("b2", 0.999)),
            eps=float(cfg.get("eps", 1e-8)), weight_decay=float(cfg.get("weight_decay", 0.0)),
            clip=None if clip is None or clip <= 0 else float(clip), warmup_steps=int(warmup),
            min_lr_ratio=float(cfg.get("min_lr_ratio", 0.0)),
            trainable=tuple(cfg.get("trainable", (".*",))),
            no_decay=tuple(cfg.get("no_decay", DEFAULT_NO_DECAY)),
        )


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The optax transformation plus what the step and the trainer need to know about it."""

    tx: optax.GradientTransformation
    spec: OptimSpec
    schedule: Callable[[jax.Array], jax.Array]  # multiplier in [0, 1] of each part's peak LR
    trainable: dict[str, bool]  # flat path -> trained?
    labels: Any  # nested like params: part name or "frozen"

    def learning_rate(self, count: jax.Array, part: str = "decoder") -> jax.Array:
        return self.spec.part_lr(part) * self.schedule(count)

    @property
    def trainable_paths(self) -> list[str]:
        return [p for p, t in self.trainable.items() if t]


# ---- parameter paths ---------------------------------------------------------------------------

def _key_str(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_str(path) -> str:
    return "/".join(_key_str(k) for k in path)


def map_with_path(fn: Callable[[str, Any], Any], tree: Any) -> Any:
    """`jax.tree.map` with the leaf's path as ``a/b/c``."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), tree)


def flat_paths(tree: Any) -> list[str]:
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def part_of(path: str) -> str:
    root = path.split("/", 1)[0]
    if root not in PART_OF_ROOT:
        raise ValueError(f"parameter {path!r}: unknown top-level module {root!r}; expected {sorted(PART_OF_ROOT)}")
    return PART_OF_ROOT[root]


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(re.fullmatch(p, path) for p in patterns)


def trainable_mask(params: Any, patterns: Sequence[str]) -> dict[str, bool]:
    """Flat path -> whether it is trained. Raises if nothing matches; warns on dead patterns."""
    for p in patterns:
        re.compile(p)
    paths = flat_paths(params)
    mask = {p: _matches(p, patterns) for p in paths}
    if not any(mask.values()):
        raise ValueError(f"optim.trainable={tuple(patterns)} matches no parameter (paths look like {paths[0]!r})")
    for pat in patterns:
        if not any(re.fullmatch(pat, p) for p in paths):
            log.warning("optim.trainable pattern %r matches no parameter", pat)
    return mask


def decay_mask(params: Any, no_decay: Sequence[str]) -> Any:
    """Nested bool tree: True where weight decay applies."""
    return map_with_path(lambda p, _: not _matches(p, no_decay), params)


def expert_axes(params: Any, num_experts: int) -> Any:
    """Nested int tree: the expert axis of each stacked expert kernel, -1 elsewhere."""
    def axis(path, x):
        ok = EXPERT_PARAM.fullmatch(path) and num_experts > 1 and len(x.shape) > EXPERT_AXIS
        return EXPERT_AXIS if ok and x.shape[EXPERT_AXIS] == num_experts else -1
    return map_with_path(axis, params)


# ---- schedule and transformation ---------------------------------------------------------------

def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> Callable[[jax.Array], jax.Array]:
    """Multiplier: linear 0 -> 1 over `warmup_steps` (HF style: `count / warmup`), then cosine to
    `min_ratio` at `total_steps`. With no warm-up the first update uses the peak rate."""
    decay = max(1, total_steps - warmup_steps)

    def schedule(count):
        c = jnp.asarray(count, jnp.float32)
        warm = c / max(1, warmup_steps)
        progress = jnp.clip((c - warmup_steps) / decay, 0.0, 1.0)
        cosine = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(c < warmup_steps, warm, cosine)

    return schedule


def clip_by_global_norm(max_norm: float, eps: float = 1e-6) -> optax.GradientTransformation:
    """Scales every gradient by `min(1, max_norm / (norm + eps))`: torch `clip_grad_norm_`, which
    the HF Trainer calls. A multiply by one scalar, where `optax.clip_by_global_norm` selects
    `g / norm * max_norm`: XLA fuses the multiply into each AdamW consumer, while optax's version
    wrote the clipped gradients to a fresh buffer, a whole extra pass (docs/profiling.md)."""

    def update(grads, state, params=None, *, global_norm=None, **extra_args):
        """`global_norm`: the gradients' norm when the caller already has it (`train.step` does)."""
        del params, extra_args
        norm = optax.global_norm(grads) if global_norm is None else global_norm
        scale = jnp.minimum(1.0, max_norm / (norm + eps))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def _part_tx(spec: OptimSpec, part: str, schedule, wd_mask_fn) -> optax.GradientTransformation:
    peak = spec.part_lr(part)
    lr = lambda count: peak * schedule(count)  # noqa: E731
    if spec.name == "adamw":
        return optax.adamw(lr, b1=spec.b1, b2=spec.b2, eps=spec.eps, weight_decay=spec.weight_decay,
                           mask=wd_mask_fn)
    if spec.name == "sgd":
        return optax.sgd(lr)
    raise ValueError(f"optim.name={spec.name!r}; expected 'adamw' or 'sgd'")


def make_optimizer(spec: OptimSpec, params: Any) -> Optimizer:
    """Builds the transformation for `params` (arrays or `jax.ShapeDtypeStruct`s)."""
    mask = trainable_mask(params, spec.trainable)
    labels = map_with_path(lambda p, _: part_of(p) if mask[p] else FROZEN, params)
    schedule = warmup_cosine(spec.warmup_steps, spec.total_steps, spec.min_lr_ratio)
    no_decay = spec.no_decay

    def wd_mask_fn(tree):  # called on a masked sub-tree; paths are those of the full tree
        return map_with_path(lambda p, _: not _matches(p, no_decay), tree)

    used = sorted(set(jax.tree.leaves(labels)))
    transforms = {part: _part_tx(spec, part, schedule, wd_mask_fn) for part in PARTS if part in used}
    transforms[FROZEN] = optax.set_to_zero()
    chain = [clip_by_global_norm(spec.clip)] if spec.clip else []
    tx = optax.chain(*chain, optax.multi_transform(transforms, labels))
    return Optimizer(tx=tx, spec=spec, schedule=schedule, trainable=mask, labels=labels)


def _param_path_of_state_leaf(path) -> str:
    """The trailing dict keys of an optimiser-state leaf path: the parameter path it mirrors
    (e.g. ``...mu/decoder/layers/mlp/up_proj/kernel`` -> ``decoder/layers/mlp/up_proj/kernel``)."""
    keys = []
    for k in reversed(path):
        if not isinstance(k, jax.tree_util.DictKey):
            break
        keys.append(str(k.key))
    return "/".join(reversed(keys))


def map_state_params(fn: Callable[[Any, Any], Any], state: Any, params_tree: Any, default: Callable[[Any], Any],
                     params_like: Any) -> Any:
    """Maps over an optimiser state: a leaf that mirrors parameter p (same path suffix and shape,
    e.g. an Adam moment) becomes `fn(leaf, params_tree[p])`; any other leaf `default(leaf)`.

    Works through `multi_transform` / `masked` states, whose masked-out entries are empty
    `MaskedNode`s (which `optax.tree_map_params` cannot pair with a full parameter tree).
    """
    values = dict(zip(flat_paths(params_like), jax.tree.leaves(params_tree, is_leaf=_is_value_leaf)))
    shapes = {p: tuple(x.shape) for p, x in zip(flat_paths(params_like), jax.tree.leaves(params_like))}

    def one(path, leaf):
        p = _param_path_of_state_leaf(path)
        if p in values and tuple(getattr(leaf, "shape", ())) == shapes[p]:
            return fn(leaf, values[p])
        return default(leaf)

    return jax.tree_util.tree_map_with_path(one, state)


def _is_value_leaf(x) -> bool:
    return isinstance(x, (jax.sharding.Sharding, int, bool))


def state_shardings(abstract_state: Any, param_shardings: Any, abstract_params: Any, replicated) -> Any:
    """Shardings of an optimiser state: param-shaped leaves (Adam moments) follow their parameter,
    everything else (step counts) is replicated."""
    return map_state_params(lambda _, s: s, abstract_state, param_shardings, lambda _: replicated, abstract_params)


def count_state(state: Any) -> int:
    """Number of scalars in an optimiser state."""
    return sum(math.prod(getattr(x, "shape", ())) for x in jax.tree.leaves(state))
