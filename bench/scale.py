"""Pod scale by simulation: the jitted training step compiled ahead of time for 8-256 devices.

    .venv/bin/python -m bench.scale                               # the full sweep (CPU backend), ~1 h
    .venv/bin/python -m bench.scale --devices 8 --stages stage2 --batches 1
    .venv/bin/python -m bench.scale --backend tpu --devices 256   # TPU compiler, no TPU needed (libtpu)

Nothing is allocated: the state and the batch are `jax.ShapeDtypeStruct`s with the shardings the
trainer uses, and `jax.jit(step, in_shardings, out_shardings, donate_argnums=0).lower(...).compile()`
runs XLA's SPMD partitioner and compiler for the whole mesh. The step is built by the trainer itself
(`rsunivlm_jax.train.trainer.Trainer.compile_steps`, on the experiment configs of
`configs/rsunivlm_1b_stage{1,2}.py`: AdamW, bf16 compute over f32 master weights, `dots` remat,
stage 2 with three G-MoE experts and only the routed one updated).

Backends (one child process per device count, because the number of fake devices is fixed when
JAX starts):

* ``cpu``: N fake host devices (`jax_num_cpu_devices`), XLA:CPU's compiler. Memory and collectives
  are those of the CPU program (XLA:CPU computes bf16 dots in f32, schedules collectives
  synchronously), a proxy for a GPU's.
* ``tpu``: the real TPU compiler from `libtpu` on a described topology
  (`jax.experimental.topologies`), without a TPU: memory is what a v5e / v4 chip would hold.

Reported per device and case: argument bytes split into parameters, optimiser state and batch
(sizes of the sharded `ShapeDtypeStruct`s, shard shape x itemsize), temporaries, output and aliased
bytes (`compiled.memory_analysis()`), the peak (arguments + outputs - aliased + temporaries), the
gradient bytes inside the temporaries (trainable parameter shards; stage 2: one expert's slice),
the collectives of the optimised HLO (kind, executions per step counting loop trip counts,
result bytes and ring-algorithm bytes on the wire), FLOPs (`cost_analysis`, includes
rematerialisation) and model FLOPs (`rsunivlm_jax.train.metrics`), then a roofline per target:
step time ~ max(FLOPs / peak, HBM bytes / HBM bandwidth, wire bytes / link bandwidth) and MFU.
Results: `bench/results/scale_<backend>.json` (written to a temporary name, then renamed);
docs/scaling.md explains the numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Iterable, Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "bench", "results")
GIB = 2 ** 30


# ---- targets -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
    """One accelerator: dense bf16 peak, HBM, and the bandwidth a collective sees per device."""

    name: str
    peak_flops: float          # dense bf16 FLOP/s per chip
    hbm_bytes: float           # memory per chip
    hbm_bw: float              # bytes/s
    link_bw: float             # collective bytes/s per device, inside a node / slice
    cross_node_bw: float | None = None  # bytes/s per device for groups that span nodes (GPU clusters)
    node_size: int | None = None        # devices per node (GPU clusters)
    tpu_topologies: Mapping[int, str] | None = None  # devices -> topology name (TPU backend)
    source: str = ""


TARGETS: dict[str, Target] = {
    "tpu-v5e": Target(
        "TPU v5e", 197e12, 16 * GIB, 819e9, 200e9,
        tpu_topologies={8: "v5e:2x4", 64: "v5e:8x8", 256: "v5e:16x16"},
        source="Google Cloud TPU docs, 'TPU v5e': 197 TFLOP/s bf16, 16 GiB HBM at 819 GB/s, ICI 1,600 Gbit/s "
               "per chip (= 200 GB/s; all-reduce bandwidth per 256-chip pod 51.2 TB/s = 200 GB/s per chip)"),
    "tpu-v4": Target(
        "TPU v4", 275e12, 32 * GIB, 1200e9, 1.1e15 / 4096,
        source="Google Cloud TPU docs, 'TPU v4': 275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s; all-reduce "
               "bandwidth per 4,096-chip pod 1.1 PB/s = 269 GB/s per chip"),
    "h100": Target(
        "H100 SXM", 989e12, 80e9, 3.35e12, 450e9, cross_node_bw=50e9, node_size=8,
        source="NVIDIA H100 datasheet: 989 TFLOP/s dense bf16 (1,979 with sparsity), 80 GB HBM3 at 3.35 TB/s, "
               "NVLink 900 GB/s (450 GB/s each way); across nodes one 400 Gbit/s NIC per GPU "
               "(NVIDIA DGX H100: 8 x ConnectX-7) = 50 GB/s"),
    "h200": Target(
        "H200 SXM", 989e12, 141e9, 4.8e12, 450e9, cross_node_bw=50e9, node_size=8,
        source="NVIDIA H200 datasheet: 989 TFLOP/s dense bf16, 141 GB HBM3e at 4.8 TB/s, NVLink 900 GB/s; "
               "across nodes 400 Gbit/s per GPU as for H100"),
}


# ---- cases -------------------------------------------------------------------------------------

STAGES = {"stage1": "rsunivlm_1b_stage1", "stage2": "rsunivlm_1b_stage2"}
RULES = ("fsdp", "fsdp_tensor")


@dataclasses.dataclass(frozen=True)
class Case:
    stage: str
    devices: int
    rules: str
    tensor: int
    per_shard_batch: int  # rows per batch shard (data x fsdp devices); global = this x batch shards
    max_fsdp: int = 0     # cap on the fsdp axis (0: none); the rest goes to data (e.g. 8 = FSDP inside a node)

    @property
    def key(self) -> str:
        cap = f"/f{self.max_fsdp}" if self.max_fsdp else ""
        return f"{self.stage}/{self.devices}/{self.rules}/t{self.tensor}{cap}/b{self.per_shard_batch}"


def load_config(stage: str, overrides: Mapping[str, Any] | None = None):
    """The experiment config of a stage (`configs/`), or a module path `pkg.mod[:arg]`."""
    import importlib
    name, _, arg = STAGES.get(stage, stage).partition(":")
    module = importlib.import_module(name if "." in name else f"configs.{name}")
    cfg = module.get_config(arg or None)
    for dotted, value in (overrides or {}).items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def sharded_sizes(rules: Mapping[str, Any], state) -> dict[str, int]:
    """Largest size each mesh axis may take: gcd of every parameter dimension sharded along it."""
    from rsunivlm_jax import sharding as shd
    out: dict[str, int] = {}
    for _, shape, axes in shd.iter_params(state):
        for size, name in zip(shape, axes):
            mesh_axes = rules.get(name) if name is not None else None
            for axis in ((mesh_axes,) if isinstance(mesh_axes, str) else (mesh_axes or ())):
                out[axis] = math.gcd(out.get(axis, 0), size)
    return out


def mesh_shape_for(model_config, devices: int, rules: str, tensor: int = 1, max_fsdp: int = 0) -> tuple[int, int, int]:
    """(data, fsdp, tensor) for `devices`: tensor as asked (fsdp rules: 1), fsdp the largest power of
    two that divides every FSDP-sharded dimension and the remaining devices (at most `max_fsdp`
    when given), data the rest."""
    import rsunivlm_jax as rs
    from rsunivlm_jax import sharding as shd
    _, state = rs.functional.abstract_model(model_config)
    r = shd.get_rules(rules)
    tensor = tensor if any(v == "tensor" or (isinstance(v, tuple) and "tensor" in v) for v in r.values()) else 1
    if devices % tensor:
        raise ValueError(f"{devices} devices are not divisible by tensor={tensor}")
    limit = sharded_sizes(r, state).get("fsdp", devices)
    limit = math.gcd(limit, max_fsdp) if max_fsdp else limit
    rest = devices // tensor
    fsdp = 1
    while rest % (fsdp * 2) == 0 and limit % (fsdp * 2) == 0:
        fsdp *= 2
    return rest // fsdp, fsdp, tensor


def make_devices(backend: str, devices: int, target: str | None = None) -> list:
    import jax
    if backend == "cpu":
        return list(jax.devices("cpu"))[:devices]
    from jax.experimental import topologies
    topo = TARGETS[target].tpu_topologies[devices]
    return list(topologies.get_topology_desc(topology_name=topo, platform="tpu").devices)


def build_step(config, mesh):
    """(trainer, jitted train step, abstract state, abstract batch): the trainer's own step on `mesh`."""
    import jax
    import jax.numpy as jnp
    from unittest import mock
    from rsunivlm_jax.train import checkpoint as ckpt_lib, trainer as trainer_lib

    with mock.patch.object(trainer_lib, "build_mesh", lambda cfg: mesh):  # our mesh, not jax.devices()
        tr = trainer_lib.Trainer(config, workdir=tempfile.gettempdir())
    train_fn, _ = tr.compile_steps()
    state = ckpt_lib.abstract_state(tr.abstract_params, tr.optimizer, tr.state_sh)
    b, t, n = tr.global_batch, int(config.data.max_text_len), int(config.data.max_images)
    s = tr.model.vision.image_size
    shapes = {"input_ids": ((b, t), jnp.int32), "attention_mask": ((b, t), jnp.int32),
              "loss_mask": ((b, t), jnp.float32), "pixel_values": ((b, n, s, s, 3), jnp.float32),
              "num_images": ((b,), jnp.int32), "granularity": ((b,), jnp.int32)}
    batch = {k: jax.ShapeDtypeStruct(shape, dt, sharding=tr.batch_sh[k]) for k, (shape, dt) in shapes.items()}
    return tr, train_fn, state, batch


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded `ShapeDtypeStruct`s (shard shape x itemsize)."""
    import jax
    import numpy as np
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def gradient_bytes(tr, state) -> int:
    """Per-device bytes of the gradients the step materialises: trainable parameter shards, with only
    the routed expert's slice of stacked expert kernels when the step works on one expert."""
    import jax
    import numpy as np
    from rsunivlm_jax.train import optim
    e = tr.model.gmoe.num_experts
    c = tr.config
    sliced = e > 1 and c.data.grouping == "granularity" and c.optim.expert_update == "selected"
    axes = optim.expert_axes(state.params, e)
    total = 0
    for (path, x), ax in zip(jax.tree_util.tree_flatten_with_path(state.params)[0], jax.tree.leaves(axes)):
        if not tr.optimizer.trainable[optim.path_str(path)]:
            continue
        n = math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
        total += n // e if (sliced and ax >= 0) else n
    return total


# ---- HLO collectives ---------------------------------------------------------------------------

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
             "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
_SHAPE = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_COMP = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")  # a computation header (not indented)
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+([a-z][\w\-]*)\(")
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=")
_CALLS = re.compile(r"\b(calls|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')
_GROUPS_IOTA = re.compile(r"replica_groups=\[([0-9,]+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?")
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")
_GROUPS_LIST = re.compile(r"replica_groups=\{((?:\{[0-9,]*\},?)*)\}")


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        if dtype in _ITEMSIZE:
            total += math.prod(int(d) for d in dims.split(",") if d) * _ITEMSIZE[dtype]
    return total


def replica_groups(line: str, num_devices: int) -> list[list[int]]:
    """The device groups of a collective (explicit `{{0,1},{2,3}}` or iota `[2,2]<=[4]` form)."""
    import numpy as np
    m = _GROUPS_IOTA.search(line)
    if m:
        shape = [int(x) for x in m.group(1).split(",")]
        dims = [int(x) for x in m.group(2).split(",")]
        ids = np.arange(math.prod(dims)).reshape(dims)
        if m.group(3):
            ids = ids.transpose([int(x) for x in m.group(3).split(",")])
        return ids.reshape(shape[0], -1).tolist()
    m = _GROUPS_MESH.search(line)
    if m:  # mesh['axis_0'=2,'axis_1'=4] {'axis_1'}: devices that differ only along the listed axes
        axes = re.findall(r"'([^']+)'=(\d+)", m.group(1))
        names, dims = [a for a, _ in axes], [int(d) for _, d in axes]
        grouped = [names.index(a) for a in re.findall(r"'([^']+)'", m.group(2))]
        ids = np.arange(math.prod(dims)).reshape(dims)
        rest = [i for i in range(len(dims)) if i not in grouped]
        return ids.transpose(rest + grouped).reshape(-1, math.prod(dims[i] for i in grouped)).tolist()
    m = _GROUPS_LIST.search(line)
    if m and m.group(1):
        return [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([0-9,]*)\}", m.group(1))]
    return [list(range(num_devices))]


def wire_bytes(kind: str, result_bytes: float, group: int) -> float:
    """Bytes one device sends in a ring algorithm for a collective with this result size."""
    if group <= 1:
        return 0.0
    frac = (group - 1) / group
    return {"all-gather": result_bytes * frac, "reduce-scatter": result_bytes * (group - 1),
            "all-reduce": 2 * result_bytes * frac, "all-to-all": result_bytes * frac,
            "collective-permute": result_bytes}[kind]


def parse_collectives(hlo: str, num_devices: int, node_size: int | None = 8) -> list[dict]:
    """Collectives of an optimised HLO module: one entry per instruction with its kind, how often
    it runs per step (products of the enclosing loops' known trip counts), result bytes, group size,
    bytes on the wire per device, and whether every group stays inside a `node_size` block of ids."""
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        m = _COMP.match(line)
        if m:
            current = m.group(2)
            comps[current] = []
            if m.group(1):
                entry = current
            continue
        if current is not None:
            if line.strip() == "}":
                current = None
            else:
                comps[current].append(line)
    calls: dict[str, list[tuple[str, int]]] = {c: [] for c in comps}
    for name, lines in comps.items():
        for line in lines:
            trip = 1
            if " while(" in line:
                t = _TRIP.search(line)
                trip = int(t.group(1)) if t else 1
            for kind, callee in _CALLS.findall(line):
                calls[name].append((callee, trip if kind == "body" else 1))
            b = _BRANCHES.search(line)
            if b:
                calls[name].extend((c.strip().lstrip("%"), 1) for c in b.group(1).split(",") if c.strip())
    mult: dict[str, int] = {}

    def visit(name: str, factor: int, depth: int = 0):
        if name not in comps or depth > 64:
            return
        mult[name] = mult.get(name, 0) + factor
        for callee, k in calls[name]:
            visit(callee, factor * k, depth + 1)

    visit(entry or next(iter(comps)), 1)
    out = []
    for name, lines in comps.items():
        if name not in mult:
            continue
        by_name = {}
        for line in lines:
            d = _DEF.match(line)
            if d:
                by_name[d.group(1)] = line
        for line in lines:
            m = _INSTR.match(line)
            if not m:
                continue
            op = m.group(2)
            kind = op[:-5] if op.endswith("-done") else op
            if kind not in COLLECTIVES or op.endswith("-start"):
                continue
            result = _shape_bytes(m.group(1))
            if op.endswith("-done"):  # groups and pairs are attributes of the matching -start
                start = re.search(r"-done\(%?([\w.\-]+)", line)
                line = by_name.get(start.group(1), line) if start else line
            groups = replica_groups(line, num_devices) if kind != "collective-permute" else [[0, 1]]
            size = len(groups[0]) if groups else num_devices
            local = node_size is not None and all(len({d // node_size for d in g}) == 1 for g in groups)
            if kind == "collective-permute":
                local = node_size is not None and _permute_local(line, node_size)
            out.append({"kind": kind, "count": mult[name], "result_bytes": result, "group": size,
                        "wire_bytes": wire_bytes(kind, result, size), "intra_node": local})
    return out


def _permute_local(line: str, node_size: int) -> bool:
    m = re.search(r"source_target_pairs=\{(.*?)\}\}", line)
    if not m:
        return False
    pairs = re.findall(r"\{(\d+),(\d+)", m.group(0))
    return all(int(a) // node_size == int(b) // node_size for a, b in pairs)


def summarize_collectives(items: Sequence[Mapping]) -> dict:
    out = {k: {"count": 0, "result_bytes": 0.0, "wire_bytes": 0.0, "wire_bytes_cross_node": 0.0} for k in COLLECTIVES}
    for it in items:
        s = out[it["kind"]]
        s["count"] += it["count"]
        s["result_bytes"] += it["count"] * it["result_bytes"]
        s["wire_bytes"] += it["count"] * it["wire_bytes"]
        if not it["intra_node"]:
            s["wire_bytes_cross_node"] += it["count"] * it["wire_bytes"]
    return out


# ---- one case ----------------------------------------------------------------------------------

def _cost(compiled) -> dict:
    try:
        c = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (not every backend implements it)
        return {}
    if isinstance(c, (list, tuple)):
        c = c[0] if c else {}
    return {k: float(v) for k, v in (c or {}).items()
            if k in ("flops", "bytes accessed", "transcendentals", "optimal_seconds")}


def run_case(case: Case, devices: list, backend: str, overrides: Mapping[str, Any] | None = None,
             hlo_dir: str | None = None) -> dict:
    """Compiles one case and returns its per-device numbers (no roofline); `hlo_dir`: also keep the
    optimised HLO text there (gzip), for a closer look."""
    import jax
    from rsunivlm_jax import sharding as shd
    from rsunivlm_jax.train import trainer as trainer_lib

    cfg = load_config(case.stage, overrides)
    model = trainer_lib.model_config_from(cfg.model)
    shape = mesh_shape_for(model, case.devices, case.rules, case.tensor, case.max_fsdp)
    mesh = shd.make_mesh(shape, devices=devices)
    rules = shd.get_rules(case.rules)
    batch_axes = rules["batch"] if isinstance(rules["batch"], tuple) else (rules["batch"],)
    shards = math.prod(mesh.shape[a] for a in batch_axes)
    cfg.sharding.preset = case.rules
    cfg.train.global_batch = case.per_shard_batch * shards
    t0 = time.perf_counter()
    tr, fn, state, batch = build_step(cfg, mesh)
    lowered = fn.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    ma = compiled.memory_analysis()
    mem = {k: int(getattr(ma, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                                            "temp_size_in_bytes", "generated_code_size_in_bytes")}
    mem["peak_bytes"] = (mem["argument_size_in_bytes"] + mem["output_size_in_bytes"] - mem["alias_size_in_bytes"]
                         + mem["temp_size_in_bytes"])
    counters = {k: getattr(state, k) for k in ("step", "opt_step", "nonfinite_total", "nonfinite_run")}
    computed = {"params": shard_bytes(state.params), "opt_state": shard_bytes(state.opt_state),
                "batch": shard_bytes(batch), "counters": shard_bytes(counters),
                "gradients": gradient_bytes(tr, state)}
    node = 8 if backend == "cpu" else None
    hlo = compiled.as_text()
    colls = parse_collectives(hlo, case.devices, node_size=node)
    if hlo_dir:
        import gzip
        os.makedirs(hlo_dir, exist_ok=True)
        name = re.sub(r"[^\w.-]+", "_", f"{backend}_{case.key}") + ".hlo.gz"
        with gzip.open(os.path.join(hlo_dir, name), "wt", encoding="utf-8") as f:
            f.write(hlo)
    return {
        "case": dataclasses.asdict(case), "key": case.key, "backend": backend,
        "mesh": dict(mesh.shape), "global_batch": tr.global_batch,
        "text_len": int(cfg.data.max_text_len), "image_slots": int(cfg.data.max_images),
        "decoder_positions": int(cfg.data.max_text_len) + int(cfg.data.max_images) * (tr.model.tokens_per_image - 1),
        "model": {"preset": cfg.model.preset, "experts": tr.model.gmoe.num_experts, "dtype": tr.model.dtype,
                  "param_dtype": tr.model.param_dtype, "remat": tr.model.remat_policy,
                  "expert_update": cfg.optim.expert_update},
        "lower_s": t1 - t0, "compile_s": t2 - t1,
        "memory": mem, "computed": computed,
        "cost": _cost(compiled), "model_flops": tr.flops_per_step(),
        **{f"params_{k}": v for k, v in param_counts(case.stage, overrides).items()},
        "collectives": summarize_collectives(colls),
        "collectives_cross_node_known": node is not None,
    }


# ---- roofline ----------------------------------------------------------------------------------

def param_counts(stage: str, overrides: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Total parameters and those one token runs through (one expert of each G-MoE layer)."""
    import jax
    import rsunivlm_jax as rs
    from rsunivlm_jax.train import optim, trainer as trainer_lib
    model = trainer_lib.model_config_from(load_config(stage, overrides).model)
    _, params = rs.abstract_init(model)
    e = max(model.gmoe.num_experts, 1)
    total = active = 0
    for (path, x), ax in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                             jax.tree.leaves(optim.expert_axes(params, e))):
        n = math.prod(x.shape)
        total += n
        active += n // e if ax >= 0 else n
    return {"total": total, "active": active}


def hbm_traffic(result: Mapping) -> float:
    """Estimated HBM bytes one device moves per step (the compiled `cost_analysis` counts a scanned
    layer once, so it is not used): the gathered compute-dtype weights read by the forward pass and
    the two backward matmuls (`/ tensor` where tensor parallelism splits them), the optimiser's pass
    (read parameters, gradients and both moments, write parameters and moments), and every saved
    activation written once and read once (temporaries less gradients)."""
    itemsize = 2 if result["model"]["dtype"] == "bfloat16" else 4
    weights = 3 * result["params_active"] * itemsize / result["mesh"].get("tensor", 1)
    c = result["computed"]
    optimiser = 2 * c["params"] + 2 * c["opt_state"] + 2 * c["gradients"]
    activations = 2 * max(result["memory"]["temp_size_in_bytes"] - c["gradients"], 0)
    return weights + optimiser + activations


def roofline(result: Mapping, target: Target) -> dict:
    """Step-time bounds on `target`: model FLOPs over the peak (rematerialised work not counted),
    estimated HBM traffic over its bandwidth (`hbm_traffic`), and the compiled program's collective
    bytes on the wire over the link bandwidth (GPU clusters: groups that span nodes at the NIC rate).
    The step time is the largest of the three (perfect overlap), so the MFU is an upper bound."""
    n = result["case"]["devices"]
    t_compute = result["model_flops"] / n / target.peak_flops
    t_hbm = hbm_traffic(result) / target.hbm_bw if "params_active" in result else 0.0
    t_comm = 0.0
    for s in result["collectives"].values():
        cross = s["wire_bytes_cross_node"] if result.get("collectives_cross_node_known") else 0.0
        if target.cross_node_bw and n > (target.node_size or n):
            t_comm += (s["wire_bytes"] - cross) / target.link_bw + cross / target.cross_node_bw
        else:
            t_comm += s["wire_bytes"] / target.link_bw
    step = max(t_compute, t_hbm, t_comm)
    peak = result["memory"]["peak_bytes"]
    return {"target": target.name, "t_compute_s": t_compute, "t_hbm_s": t_hbm, "t_collectives_s": t_comm,
            "step_s": step, "bound": ["compute", "hbm", "collectives"][[t_compute, t_hbm, t_comm].index(step)],
            "mfu": result["model_flops"] / (step * target.peak_flops * n) if step > 0 else None,
            "peak_gib": peak / GIB, "fits": peak <= target.hbm_bytes}


def max_batch_that_fits(results: Sequence[Mapping], capacity: float) -> dict | None:
    """Largest global batch whose per-device peak stays under `capacity`. When a compiled batch
    does not fit, the largest compiled one that does (peaks need not be linear in the batch: the
    compiler's schedule changes); when all fit, a straight line through the two largest
    (peak = fixed + per-row x rows) extrapolates. None without results."""
    pts = sorted((r["case"]["per_shard_batch"], r["memory"]["peak_bytes"], r["global_batch"]) for r in results)
    if not pts:
        return None
    shards = pts[0][2] // pts[0][0]
    fits = [p for p in pts if p[1] <= capacity]
    if len(fits) < len(pts) or len(pts) < 2:
        best = fits[-1][0] if fits else 0
        return {"global_batch": best * shards, "per_shard_batch": best, "extrapolated": False}
    (b0, m0, _), (b1, m1, _) = pts[-2], pts[-1]
    slope = (m1 - m0) / (b1 - b0)
    best = b1 if slope <= 0 else max(int((capacity - (m1 - slope * b1)) // slope), b1)
    return {"global_batch": best * shards, "per_shard_batch": best, "extrapolated": best > b1,
            "bytes_per_row": slope, "fixed_bytes": m1 - slope * b1}


# ---- driver ------------------------------------------------------------------------------------

def child_main(args) -> int:
    """Runs every case for one device count in this process; one JSON line per case on stdout."""
    if args.backend == "cpu":
        import jax
        jax.config.update("jax_num_cpu_devices", args.devices)
    else:
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8")
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    cases = [Case(**c) for c in json.loads(args.cases)]
    overrides = json.loads(args.overrides or "{}")
    for case in cases:
        devs = make_devices(args.backend, case.devices, args.target)
        print(f"  compiling {case.key} ...", file=sys.stderr, flush=True)
        try:
            res = run_case(case, devs, args.backend, overrides, hlo_dir=args.hlo_dir)
            if args.target:
                res["tpu_target"] = args.target
        except Exception as e:  # noqa: BLE001  (reported, the sweep goes on)
            res = {"case": dataclasses.asdict(case), "key": case.key, "backend": args.backend,
                   "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        print(json.dumps(res), flush=True)
    return 0


def plan(stages: Iterable[str], devices: Iterable[int], rules: Iterable[str], batches: Iterable[int],
         tensor: int, max_fsdp: int = 0) -> list[Case]:
    return [Case(s, n, r, tensor if r != "fsdp" else 1, b, max_fsdp) for n in devices for s in stages
            for r in rules for b in batches]


def run_children(cases: Sequence[Case], backend: str, targets: Sequence[str | None], timeout: float,
                 overrides: Mapping[str, Any], log, hlo_dir: str | None = None) -> list[dict]:
    out = []
    by_devices: dict[int, list[Case]] = {}
    for c in cases:
        by_devices.setdefault(c.devices, []).append(c)
    total, done = len(cases) * len(targets), 0
    for target in targets:
        for n, group in sorted(by_devices.items()):
            cmd = [sys.executable, "-m", "bench.scale", "--child", "--backend", backend, "--devices", str(n),
                   *(["--hlo-dir", hlo_dir] if hlo_dir else []),
                   "--cases", json.dumps([dataclasses.asdict(c) for c in group]),
                   "--overrides", json.dumps(dict(overrides))]
            if target:
                cmd += ["--target", target]
            env = dict(os.environ, XLA_FLAGS="")
            if backend == "tpu":
                env["JAX_PLATFORMS"] = "cpu"
            log(f"{n} devices{' on ' + target if target else ''}: {len(group)} case(s)")
            t0 = time.perf_counter()
            seen = set()
            with tempfile.TemporaryFile("w+") as err:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
                timer = threading.Timer(timeout, proc.kill)  # a stuck compile ends its child, not the sweep
                timer.start()
                try:
                    for line in proc.stdout:
                        if not line.startswith("{"):
                            continue
                        res = json.loads(line)
                        seen.add(res["key"])
                        out.append(res)
                        done += 1
                        log(f"  [{done}/{total}] {_one_line(res)}")
                    proc.wait()
                finally:
                    timer.cancel()
                err.seek(0)
                stderr = err.read()
            if time.perf_counter() - t0 >= timeout:
                stderr += f"\ntimed out after {timeout:.0f} s"
            for c in group:
                if c.key not in seen:
                    tail = " | ".join(stderr.strip().splitlines()[-3:])
                    out.append({"case": dataclasses.asdict(c), "key": c.key, "backend": backend,
                                "tpu_target": target, "error": f"no result (exit {proc.returncode}): {tail[:300]}"})
                    done += 1
                    log(f"  [{done}/{total}] {c.key}: NO RESULT ({tail[:200]})")
            log(f"  {n} devices done in {time.perf_counter() - t0:.0f} s")
    return out


def _one_line(res: Mapping) -> str:
    if "error" in res:
        return f"{res['key']}: FAILED {res['error']}"
    m = res["memory"]
    return (f"{res['key']}: global batch {res['global_batch']}, peak {m['peak_bytes'] / GIB:.2f} GiB/device "
            f"(temp {m['temp_size_in_bytes'] / GIB:.2f}), compile {res['compile_s']:.0f} s")


def add_rooflines(results: Sequence[dict]) -> None:
    for r in results:
        if "error" in r:
            continue
        names = [r["tpu_target"]] if r.get("tpu_target") else list(TARGETS)
        r["roofline"] = {name: roofline(r, TARGETS[name]) for name in names}


def save_json(result: Mapping, path: str) -> None:
    """Writes `path` atomically (temporary file in the same directory, then rename)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers")
    return vals


def _names(choices: Sequence[str]):
    def parse(text: str) -> list[str]:
        vals = [x.strip() for x in text.split(",") if x.strip()]
        bad = [v for v in vals if v not in choices]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated subset of {list(choices)}")
        return vals
    return parse


# ---- report ------------------------------------------------------------------------------------

def _load(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        results = json.load(f)["results"]
    counts: dict[str, dict] = {}
    for r in results:  # files from before the parameter counts were recorded
        if "error" not in r and "params_active" not in r:
            stage = r["case"]["stage"]
            counts.setdefault(stage, param_counts(stage))
            r.update({f"params_{k}": v for k, v in counts[stage].items()})
    return results


_OOM = re.compile(r"HLO temporaries \(([\d.]+\s*[KMGT]i?B?)\)")  # the TPU compiler's refusal


def _bytes(text: str) -> float:
    """'17.37G' (XLA's sizes are binary) -> bytes."""
    m = re.match(r"([\d.]+)\s*([KMGT]?)", text)
    return float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")


def _rules_label(case: Mapping) -> str:
    return case["rules"] + (f", fsdp <= {case['max_fsdp']}" if case.get("max_fsdp") else "")


def _group_key(r: Mapping) -> tuple:
    c = r["case"]
    return c["stage"], c["devices"], c["rules"], c["tensor"], c.get("max_fsdp", 0)


def report(cpu: Sequence[dict], tpu: Sequence[dict]) -> str:
    """Markdown tables: per-device memory and collectives, roofline per target, largest batch."""
    ok = [r for r in cpu if "error" not in r]
    tpu_by_key = {r["key"]: r for r in tpu if "error" not in r}
    tpu_oom = {r["key"]: m.group(1) for r in tpu if "error" in r and (m := _OOM.search(r["error"]))}
    g = lambda x: f"{x / GIB:.2f}"  # noqa: E731
    gb = lambda x: f"{x / 1e9:.1f}"  # noqa: E731
    lines = ["| stage | devices | mesh (data x fsdp x tensor) | rules | global batch | params | AdamW moments | "
             "gradients | temporaries | peak (XLA:CPU) | peak (TPU v5e compiler) | all-gather | "
             "reduce (all-reduce + reduce-scatter) | all-gather / reduce on v5e | compile (CPU) |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(ok, key=lambda r: (_group_key(r), r["global_batch"])):
        c, m, col = r["computed"], r["memory"], r["collectives"]
        t = tpu_by_key.get(r["key"])
        tpu_peak = g(t["memory"]["peak_bytes"]) if t else (
            f"refused: temporaries {tpu_oom[r['key']]}" if r["key"] in tpu_oom else "-")
        tc = t["collectives"] if t else None
        tpu_coll = (f"{gb(tc['all-gather']['wire_bytes'])} / "
                    f"{gb(tc['all-reduce']['wire_bytes'] + tc['reduce-scatter']['wire_bytes'])}" if t else "-")
        mesh = " x ".join(str(r["mesh"][a]) for a in ("data", "fsdp", "tensor"))
        red = col["all-reduce"]["wire_bytes"] + col["reduce-scatter"]["wire_bytes"]
        lines.append(f"| {r['case']['stage']} | {r['case']['devices']} | {mesh} | {_rules_label(r['case'])} | "
                     f"{r['global_batch']} | {g(c['params'])} | {g(c['opt_state'])} | {g(c['gradients'])} | "
                     f"{g(m['temp_size_in_bytes'])} | {g(m['peak_bytes'])} | {tpu_peak} | "
                     f"{gb(col['all-gather']['wire_bytes'])} | {gb(red)} | {tpu_coll} | {r['compile_s']:.0f} s |")
    lines += ["", "GiB per device; collectives: GB sent per device per step (ring algorithms), loop trip counts "
              "included.", ""]
    names = list(TARGETS)
    lines += ["| stage | devices | rules | global batch | " + " | ".join(
        f"{TARGETS[n].name}: step, MFU" for n in names) + " |", "|---|---:|---|---:|" + "---:|" * len(names)]
    for r in sorted(ok, key=lambda r: (_group_key(r), r["global_batch"])):
        cells = []
        for n in names:
            if n == "tpu-v5e" and r["key"] in tpu_oom:
                cells.append("refused by the TPU compiler")
                continue
            src = tpu_by_key.get(r["key"]) if n == "tpu-v5e" and r["key"] in tpu_by_key else r
            src = dict(src, params_active=r["params_active"]) if "params_active" not in src else src
            rf = roofline(src, TARGETS[n])
            fit = "" if rf["fits"] else " (does not fit)"
            cells.append(f"{rf['step_s'] * 1e3:.0f} ms {rf['bound'][:4]}, {rf['mfu']:.0%}{fit}")
        lines.append(f"| {r['case']['stage']} | {r['case']['devices']} | {_rules_label(r['case'])} | "
                     f"{r['global_batch']} | " + " | ".join(cells) + " |")
    lines += ["", "Roofline: max(model FLOPs / peak, estimated HBM bytes / bandwidth, collective bytes / link "
              "bandwidth); bound: comp(ute), hbm, coll(ectives). TPU v5e uses the TPU compiler's program where it "
              "was compiled, the others the XLA:CPU program.", ""]
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault(_group_key(r), []).append(r)
    tgroups: dict[tuple, list[dict]] = {}
    for r in tpu_by_key.values():
        tgroups.setdefault(_group_key(r), []).append(r)
    for r in tpu:  # a refused compile is a point too: the temporaries it asked for + the arguments
        if r["key"] in tpu_oom and tgroups.get(_group_key(r)):
            ref = tgroups[_group_key(r)][0]["memory"]
            need = _bytes(tpu_oom[r["key"]]) + ref["peak_bytes"] - ref["temp_size_in_bytes"]
            shards = tgroups[_group_key(r)][0]["global_batch"] // tgroups[_group_key(r)][0]["case"]["per_shard_batch"]
            tgroups[_group_key(r)].append({"case": r["case"], "memory": {"peak_bytes": need},
                                           "global_batch": r["case"]["per_shard_batch"] * shards})
    lines += ["| stage | devices | rules | " + " | ".join(f"largest global batch, {TARGETS[n].name}" for n in names)
              + " |", "|---|---:|---|" + "---:|" * len(names)]
    for key in sorted(groups):
        cells = []
        for n in names:
            pts = tgroups.get(key) if n == "tpu-v5e" and len(tgroups.get(key, [])) >= 2 else groups[key]
            fit = max_batch_that_fits(pts, TARGETS[n].hbm_bytes)
            tag = "" if not fit else (" (extrapolated)" if fit.get("extrapolated") else "")
            src = " TPU" if n == "tpu-v5e" and pts is not groups[key] else ""
            cells.append(f"{fit['global_batch'] if fit else '-'}{tag}{src}")
        label = key[2] + (f", fsdp <= {key[4]}" if key[4] else "")
        lines.append(f"| {key[0]} | {key[1]} | {label} | " + " | ".join(cells) + " |")
    failed = [r for r in list(cpu) + list(tpu) if "error" in r]
    if failed:
        lines += ["", "Did not compile:", ""] + [f"* {r['backend']} {r['key']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def _stages(text: str) -> list[str]:
    vals = [x.strip() for x in text.split(",") if x.strip()]
    for v in vals:
        name = STAGES.get(v, v).partition(":")[0]
        if not re.fullmatch(r"\w+", name) or not os.path.isfile(os.path.join(ROOT, "configs", name + ".py")):
            raise argparse.ArgumentTypeError(f"stage {v!r}: expected {list(STAGES)} or a module of configs/")
    if not vals:
        raise argparse.ArgumentTypeError("no stage given")
    return vals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="cpu", choices=("cpu", "tpu"))
    parser.add_argument("--devices", default="8,64,256", type=_ints, help="device counts (comma-separated)")
    parser.add_argument("--stages", default="stage1,stage2", type=_stages,
                        help="stage1, stage2 (the rsunivlm-1b recipe) or a configs/ module[:arg], e.g. tiny_cpu:stage2")
    parser.add_argument("--rules", default="fsdp,fsdp_tensor", type=_names(RULES))
    parser.add_argument("--tensor", type=int, default=4, help="tensor-axis size for fsdp_tensor")
    parser.add_argument("--max-fsdp", type=int, default=0,
                        help="cap on the fsdp axis, the rest is data parallel (8: FSDP inside 8-GPU nodes)")
    parser.add_argument("--batches", default="1,2", type=_ints,
                        help="rows per batch shard (global batch = this x data x fsdp devices)")
    parser.add_argument("--targets", default="tpu-v5e", type=_names(("tpu-v5e",)),
                        help="TPU backend: which chips' compiler to run (v5e; v4 topologies list cores, not chips)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per device count (child process)")
    parser.add_argument("--out", default=None, help="results JSON (default bench/results/scale_<backend>.json)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                        help="config override, e.g. data.max_text_len=1024 (repeatable)")
    parser.add_argument("--hlo-dir", default=None, help="also write each optimised HLO module here (gzip)")
    parser.add_argument("--report", action="store_true",
                        help="print the markdown tables of bench/results/scale_{cpu,tpu}.json and exit")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cases", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.devices = args.devices[0]
        return child_main(args)
    if args.report:
        print(report(_load(os.path.join(RESULTS_DIR, "scale_cpu.json")),
                     _load(os.path.join(RESULTS_DIR, "scale_tpu.json"))))
        return 0
    if args.tensor < 1 or args.max_fsdp < 0:
        parser.error(f"--tensor {args.tensor} / --max-fsdp {args.max_fsdp}: expected >= 1 / >= 0")
    overrides = {}
    for item in args.override:
        key, sep, value = item.partition("=")
        try:
            overrides[key] = json.loads(value) if sep else None
        except json.JSONDecodeError:
            parser.error(f"--override {item!r}: the value must be JSON (e.g. data.max_text_len=1024)")
        if not sep or not key:
            parser.error(f"--override {item!r}: expected KEY=JSON")
    if args.backend == "tpu":
        try:
            import libtpu  # noqa: F401
        except ImportError:
            parser.error("--backend tpu needs the libtpu package (pip install libtpu matching jax[tpu])")
    targets = args.targets if args.backend == "tpu" else [None]
    cases = plan(args.stages, args.devices, args.rules, args.batches, args.tensor, args.max_fsdp)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    log(f"{len(cases) * len(targets)} compilations on the {args.backend} backend")
    t0 = time.perf_counter()
    results = run_children(cases, args.backend, targets, args.timeout, overrides, log,
                           hlo_dir=os.path.abspath(args.hlo_dir) if args.hlo_dir else None)
    add_rooflines(results)
    import jax
    out = {"backend": args.backend, "jax": jax.__version__, "overrides": overrides,
           "targets": {k: dataclasses.asdict(v) for k, v in TARGETS.items()},
           "wall_s": time.perf_counter() - t0, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
           "results": results}
    path = args.out or os.path.join(RESULTS_DIR, f"scale_{args.backend}.json")
    save_json(out, path)
    log(f"wrote {os.path.relpath(path, ROOT) if path.startswith(ROOT) else path}")
    failed = [r["key"] for r in results if "error" in r]
    if failed:
        log(f"{len(failed)} case(s) did not compile: {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
