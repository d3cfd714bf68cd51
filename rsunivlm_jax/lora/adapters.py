"""Adapter modules, their parameters as a plain dict, and merging them into the base.

Each adapted module gets a `lora` attribute: `Adapter`, a `flax.nnx.LoRA` (its `lora_a [in, r]`,
`lora_b [r, out]` and `x @ a @ b`) that also knows its scaling and dropout. Stacked modules get
stacked adapters through the initialiser (`[L, in, r]` for a scanned layer, `[L, E, in, r]` for the
G-MoE experts), with the kernel's logical axes, so the scan slices them with their layer and the
sharding rules place them like their kernel (the rank axis is never sharded).

* `Linear` adds `adapter.delta(x)` to its output: peft's `lora_B(lora_A(dropout(x))) * scaling`.
* `ExpertLinear.weight()` returns `W_e + scaling * A_e @ B_e` (`adapter.weight_delta()`), the
  stacked kernels that every G-MoE routing strategy consumes: each row is routed to its expert's
  adapter exactly as to its expert. nnx's `LoRA.__call__` has no form for a stack of kernels
  indexed by expert, so this delta (one einsum) is written here; expert adapters take no dropout.

Parameter trees: `rs.init` / a converted checkpoint give the base dict; `init` gives the adapter
dict (the same paths plus `<module>/lora/{lora_a,lora_b}`); `combine(base, adapters)` is what
`rs.forward(graphdef, ...)` takes with this module's `graphdef`; `merge(base, adapters, lora)` folds
the adapters into the base kernels (a base-shaped tree for the plain graphdef and the exporters).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from rsunivlm_jax import sharding as shd
from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.lora.config import LoraConfig, Target, resolve_targets
from rsunivlm_jax.tree import flatten, unflatten

Params = dict[str, Any]
ADAPTER = "lora"  # attribute / path component holding a module's adapter
A, B = "lora_a", "lora_b"
RANK_AXIS = None  # logical name of the rank axis: replicated under every rule preset

_DROPOUT_KEYS: list[jax.Array] = []


def _peft_a_init(key, shape, dtype):
    """torch `kaiming_uniform_(a=sqrt(5))` over the fan-in (peft's A): U(-1/sqrt(in), 1/sqrt(in))."""
    bound = shape[-2] ** -0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _stacked(init, stack: tuple[int, ...]):
    """An initialiser for `nnx.LoRA` that prepends the stacking axes to the shape it is asked for."""
    return lambda key, shape, dtype: init(key, tuple(stack) + tuple(shape), dtype)


@contextlib.contextmanager
def dropout_key(key: jax.Array | None):
    """Enables adapter dropout while tracing (training); without it adapters run deterministically."""
    if key is None:
        yield
        return
    _DROPOUT_KEYS.append(key)
    try:
        yield
    finally:
        _DROPOUT_KEYS.pop()


class Adapter(nnx.LoRA):
    """`flax.nnx.LoRA` plus peft's scaling and input dropout (peft `LoraLayer`)."""

    def __init__(self, target: Target, lora: LoraConfig, uid: int, *, dtype: str, rngs: nnx.Rngs):
        kind_stack = target.stack
        super().__init__(
            target.d_in, lora.rank, target.d_out, dtype=jnp.dtype(dtype), param_dtype=jnp.float32,
            a_initializer=_stacked(_peft_a_init, kind_stack),
            b_initializer=_stacked(jax.nn.initializers.zeros, kind_stack),
            a_metadata={"logical_axes": target.stack_axes + (target.in_axis, RANK_AXIS)},
            b_metadata={"logical_axes": target.stack_axes + (RANK_AXIS, target.out_axis)}, rngs=rngs)
        self.scaling = lora.scaling
        self.dropout = float(lora.dropout)
        self.uid = uid  # distinguishes the dropout masks of different modules

    def _dropout(self, x: jax.Array) -> jax.Array:
        if self.dropout <= 0.0 or not _DROPOUT_KEYS:
            return x
        # Stacked layers are traced once by the scan; the layer's own A (distinct per layer) salts
        # the key so that every layer draws its own mask, deterministically for a given state.
        salt = jax.lax.bitcast_convert_type(jnp.ravel(self.lora_a[...])[0].astype(jnp.float32), jnp.uint32)
        key = jax.random.fold_in(jax.random.fold_in(_DROPOUT_KEYS[-1], self.uid), salt)
        keep = jax.random.bernoulli(key, 1.0 - self.dropout, x.shape)
        return jnp.where(keep, x / (1.0 - self.dropout), jnp.zeros((), x.dtype)).astype(x.dtype)

    def delta(self, x: jax.Array) -> jax.Array:
        """`scaling * dropout(x) @ A @ B` (added to a `Linear`'s output)."""
        return super().__call__(self._dropout(x)) * jnp.asarray(self.scaling, self.dtype)

    def weight_delta(self) -> jax.Array:
        """`scaling * A @ B` for stacked kernels `[..., in, out]` (float32, added to `ExpertLinear.weight()`)."""
        return self.scaling * jnp.einsum("...ir,...ro->...io", self.lora_a[...], self.lora_b[...],
                                         precision=jax.lax.Precision.HIGHEST)


def _module_at(model: nnx.Module, path: str) -> nnx.Module:
    node = model
    for name in path.split("/"):
        node = getattr(node, name)
    return node


def attach(model: nnx.Module, targets: list[Target], lora: LoraConfig, rngs: nnx.Rngs) -> nnx.Module:
    """Gives every target module of `model` its `Adapter` (in place); returns `model`."""
    for uid, t in enumerate(targets):
        module = _module_at(model, t.path)
        if getattr(module, ADAPTER, None) is not None:
            raise ValueError(f"{t.path} already has an adapter")
        setattr(module, ADAPTER, Adapter(t, lora, uid, dtype=model.config.dtype, rngs=rngs))
    return model


@functools.lru_cache(maxsize=16)
def abstract_model(config: ModelConfig, lora: LoraConfig) -> tuple[nnx.GraphDef, nnx.State, tuple[Target, ...]]:
    """(graphdef of the adapted model, abstract adapter state with logical axes, targets); allocates nothing."""
    from rsunivlm_jax.models.rsunivlm import RSUniVLM
    targets = resolve_targets(config, lora)
    model = nnx.eval_shape(lambda: attach(RSUniVLM(config, nnx.Rngs(0)), targets, lora, nnx.Rngs(0)))
    graphdef, _ = nnx.split(model)
    return graphdef, nnx.state(model, nnx.LoRAParam), tuple(targets)


def graphdef(config: ModelConfig, lora: LoraConfig) -> nnx.GraphDef:
    """The adapted model's graphdef: `rs.forward(graphdef(c, l), combine(base, adapters), ...)`."""
    return abstract_model(config, lora)[0]


def targets(config: ModelConfig, lora: LoraConfig) -> tuple[Target, ...]:
    return abstract_model(config, lora)[2]


def param_shardings(config: ModelConfig, lora: LoraConfig, mesh: Mesh, rules=None) -> Params:
    """NamedShardings of the adapter tree under a rule preset (the kernels' logical axes)."""
    _, state, _ = abstract_model(config, lora)
    return shd.param_shardings(state, mesh, shd.get_rules(rules))


def abstract_init(config: ModelConfig, lora: LoraConfig, *, mesh: Mesh | None = None, rules=None) -> Params:
    """The adapter tree as `jax.ShapeDtypeStruct`s (with shardings when a mesh is given)."""
    _, state, _ = abstract_model(config, lora)
    params = nnx.to_pure_dict(state)
    if mesh is not None:
        params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params,
                              param_shardings(config, lora, mesh, rules))
    return params


@functools.lru_cache(maxsize=16)
def _init_fn(config: ModelConfig, lora: LoraConfig, mesh: Mesh | None, rules_key: tuple | None):
    """Jitted adapter initialiser, cached per (config, lora, mesh, rules)."""
    tgts = targets(config, lora)

    def make(key):
        out = {}
        for i, t in enumerate(tgts):
            out[f"{t.path}/{ADAPTER}/{A}"] = _peft_a_init(jax.random.fold_in(key, i), t.stack + (t.d_in, lora.rank),
                                                          jnp.float32)
            out[f"{t.path}/{ADAPTER}/{B}"] = jnp.zeros(t.stack + (lora.rank, t.d_out), jnp.float32)
        return unflatten(out)

    shardings = None if mesh is None else param_shardings(config, lora, mesh, dict(rules_key))
    return jax.jit(make, out_shardings=shardings)


def init(config: ModelConfig, lora: LoraConfig, rng: int | jax.Array = 0, *, mesh: Mesh | None = None,
         rules=None) -> Params:
    """Fresh adapters: A as peft initialises it (a key per module, folded from `rng`), B zero."""
    key = jax.random.key(rng) if isinstance(rng, int) else rng
    rules_key = None if mesh is None else tuple(sorted(shd.get_rules(rules).items()))
    return _init_fn(config, lora, mesh, rules_key)(key)


def combine(base: Mapping[str, Any], adapters: Mapping[str, Any]) -> Params:
    """One tree for the adapted graphdef: the base tree with each module's `lora` subtree added (no copies)."""
    out = dict(base)
    for key, value in adapters.items():
        if key not in out:
            if key != ADAPTER:
                raise KeyError(f"adapter subtree {key!r} has no module in the base parameters")
            out[key] = value
        elif isinstance(value, Mapping) and isinstance(out[key], Mapping):
            out[key] = combine(out[key], value)
        else:
            raise KeyError(f"adapter entry {key!r} collides with a base parameter")
    return out


def split(params: Mapping[str, Any]) -> tuple[Params, Params]:
    """The inverse of `combine`: (base, adapters)."""
    flat = flatten(params)
    is_adapter = lambda p: f"/{ADAPTER}/" in f"/{p}"  # noqa: E731
    return (unflatten({p: v for p, v in flat.items() if not is_adapter(p)}),
            unflatten({p: v for p, v in flat.items() if is_adapter(p)}))


def adapter_modules(adapters: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Module path -> (A, B) of an adapter tree."""
    flat = flatten(adapters)
    mods = sorted({p.rsplit(f"/{ADAPTER}/", 1)[0] for p in flat})
    return {m: (flat[f"{m}/{ADAPTER}/{A}"], flat[f"{m}/{ADAPTER}/{B}"]) for m in mods}


@functools.partial(jax.jit, static_argnames=("scaling",))
def _merge_kernel(kernel, a, b, scaling: float):
    delta = scaling * jnp.einsum("...ir,...ro->...io", a, b, precision=jax.lax.Precision.HIGHEST)
    return (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)


def merge(base: Mapping[str, Any], adapters: Mapping[str, Any], lora: LoraConfig) -> Params:
    """Base tree with every adapted kernel replaced by `W + scaling * A @ B` (in the kernel's dtype);
    runs with the plain graphdef (`rs.init` / `load_pretrained`) and exports like any checkpoint."""
    flat = flatten(base)
    for module, (a, b) in adapter_modules(adapters).items():
        key = f"{module}/kernel"
        if key not in flat:
            raise KeyError(f"adapter for {module}: the base parameters have no {key}")
        if tuple(flat[key].shape) != tuple(a.shape[:-1]) + (b.shape[-1],):
            raise ValueError(f"adapter for {module}: A {tuple(a.shape)} / B {tuple(b.shape)} do not fit the "
                             f"kernel {tuple(flat[key].shape)}")
        flat[key] = _merge_kernel(flat[key], a, b, lora.scaling)
    return unflatten(flat)
