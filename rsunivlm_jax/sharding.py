"""Meshes, logical-axis rule presets, parameter shardings and activation constraints.

Every parameter carries `logical_axes` metadata (see `layers/common.py`). A rule preset maps
logical names to mesh axes of an Auto-typed `(data, fsdp, tensor)` mesh; `jax.jit` then gets
explicit in/out shardings (pjit is deprecated). Activations are constrained through
`constrain(x, names)`, a no-op unless `use_sharding(mesh, rules)` is active.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from rsunivlm_jax.tree import unflatten

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = str | tuple[str, ...] | None

_COMMON = {
    "layers": None, "expert": None, "norm": None, "head_dim": None,
    "q_heads": None, "kv_heads": None,  # 14 query / 2 kv heads divide badly: never sharded
    "batch": ("data", "fsdp"), "seq": None, "act_embed": None,
}
RULES: dict[str, dict[str, MeshAxes]] = {
    # Pure FSDP (+ data parallelism): the default for a model of this size.
    "fsdp": {**_COMMON, "vocab": None, "embed": "fsdp", "mlp": None, "vit_embed": "fsdp", "vit_mlp": None,
             "vit_heads": None, "conn_in": "fsdp", "conn_out": None, "act_mlp": None},
    # FSDP plus tensor parallelism on MLP hidden, vocabulary and the vision heads.
    "fsdp_tensor": {**_COMMON, "vocab": "tensor", "embed": "fsdp", "mlp": "tensor", "vit_embed": "fsdp",
                    "vit_mlp": "tensor", "vit_heads": "tensor", "conn_in": "fsdp", "conn_out": "tensor",
                    "act_mlp": "tensor"},
}


def get_rules(rules: str | Mapping[str, MeshAxes] | None) -> dict[str, MeshAxes]:
    if rules is None:
        return dict(RULES["fsdp"])
    if isinstance(rules, str):
        if rules not in RULES:
            raise KeyError(f"unknown sharding preset {rules!r}; known: {sorted(RULES)}")
        return dict(RULES[rules])
    return dict(rules)


def make_mesh(shape: Sequence[int] | Mapping[str, int] = (1, -1, 1), axes: Sequence[str] = MESH_AXES,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a mesh with Auto axis types; one entry of `shape` may be -1 (all remaining devices)."""
    if isinstance(shape, Mapping):
        axes, shape = tuple(shape), tuple(shape.values())
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, have {len(devices)}")
    grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, tuple(axes), axis_types=(AxisType.Auto,) * len(axes))


def logical_to_spec(names: Sequence[str | None], rules: Mapping[str, MeshAxes]) -> P:
    spec = []
    for name in names:
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule; rules define {sorted(rules)}")
        spec.append(None if name is None else rules[name])
    return P(*spec)


def _axis_size(mesh: Mesh, axes: MeshAxes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def iter_params(state: nnx.State) -> Iterator[tuple[str, tuple[int, ...], tuple[str | None, ...]]]:
    """Yields (path 'a/b/c', shape, logical axes) for every parameter of an (abstract) state."""
    for path, var in nnx.to_flat_state(state):
        axes = var.get_metadata().get("logical_axes")
        if axes is None:
            raise ValueError(f"parameter {'/'.join(map(str, path))} has no logical_axes metadata")
        yield "/".join(map(str, path)), tuple(var.shape), tuple(axes)


def validate(state: nnx.State, mesh: Mesh, rules: Mapping[str, MeshAxes]) -> None:
    """Raises before compiling if a sharded dimension does not divide its mesh axes; names all offenders."""
    problems = []
    for path, shape, axes in iter_params(state):
        for dim, (size, name) in enumerate(zip(shape, axes)):
            mesh_axes = logical_to_spec([name], rules)[0]
            n = _axis_size(mesh, mesh_axes)
            if size % n:
                problems.append(f"  {path}: dim {dim} (size {size}, logical {name!r}) is not divisible by mesh "
                                f"axis {mesh_axes!r} of size {n}")
    if problems:
        raise ValueError("sharding rules do not fit the parameters:\n" + "\n".join(problems))


def param_specs(state: nnx.State, rules: Mapping[str, MeshAxes]) -> dict:
    """Nested dict (same structure as `nnx.to_pure_dict`) of PartitionSpecs."""
    return unflatten({path: logical_to_spec(axes, rules) for path, _, axes in iter_params(state)})


def param_shardings(state: nnx.State, mesh: Mesh, rules: Mapping[str, MeshAxes]) -> dict:
    validate(state, mesh, rules)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(state, rules),
                        is_leaf=lambda x: isinstance(x, P))


def data_sharding(mesh: Mesh, rules: Mapping[str, MeshAxes] | str | None = None, ndim: int = 2) -> NamedSharding:
    """Sharding for a batch array whose leading axis is the batch."""
    rules = get_rules(rules)
    return NamedSharding(mesh, P(rules["batch"], *([None] * (ndim - 1))))


_ACTIVE: list[tuple[Mesh, Mapping[str, MeshAxes]]] = []


@contextlib.contextmanager
def use_sharding(mesh: Mesh, rules: Mapping[str, MeshAxes] | str | None = None):
    """Activates the mesh and rules that `constrain` uses while tracing (usable inside jit)."""
    _ACTIVE.append((mesh, get_rules(rules)))
    try:
        yield
    finally:
        _ACTIVE.pop()


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names; dimensions that do not divide stay unsharded."""
    if not _ACTIVE:
        return x
    mesh, rules = _ACTIVE[-1]
    spec = []
    for size, name in zip(x.shape, names):
        axes = rules.get(name) if name is not None else None
        spec.append(axes if axes is not None and size % _axis_size(mesh, axes) == 0 else None)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))
