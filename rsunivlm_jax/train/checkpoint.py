"""Orbax checkpoints of a training run.

Layout (one Orbax `CheckpointManager` under `<workdir>/checkpoints`)::

    <workdir>/checkpoints/<step>/
      params/     StandardSave of the parameter tree (plain nested dict, HF-like paths)
      opt_state/  StandardSave of {"optimizer": optax state, "counters": step, opt_step, NaN counters}
      data_iter/  the Grain iterator state, process_<i>-of-<n>.json (grain.checkpoint format)
      meta/       JSON: resolved experiment config, model config, mesh and rules, code version

* Saves are asynchronous (array copies to host happen in `save`, writing in the background), at
  most `keep` are kept. The data iterator state is captured synchronously at `save` time, so the
  stored state always belongs to the stored step even when the loop has moved on.
* Restore always goes through abstract targets (`jax.ShapeDtypeStruct` with `NamedSharding`s of the
  CURRENT mesh), so a checkpoint written on one mesh restores onto another.
* Parameters alone (a run as the start of another, or for inference) are read by
  `rsunivlm_jax.checkpoints` (`load`, `load_params`).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
from typing import Any, Mapping

import grain
import jax
from etils import epath
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rsunivlm_jax.train.optim import Optimizer, state_shardings
from rsunivlm_jax.train.step import TrainState

log = logging.getLogger(__name__)

ITEMS = ("params", "opt_state", "data_iter", "meta")
COUNTERS = ("step", "opt_step", "nonfinite_total", "nonfinite_run")
LAYOUT = {"scan_layers": True, "expert_axis": 1, "params": "nested dict, paths as rsunivlm_jax.functional"}


# ---- data iterator state -----------------------------------------------------------------------

class IteratorSnapshot:
    """The state of a data iterator at save time, in the shape `grain.checkpoint` writes."""

    def __init__(self, iterator):
        state = iterator.get_state()
        self._state = state if isinstance(state, bytes) else json.dumps(state, indent=1).encode()

    def get_state(self) -> bytes:
        return self._state


class IteratorRestoreTarget:
    """Restores a JSON iterator state into `iterator` (Grain `DatasetIterator` or any object with
    `set_state(dict)`; a Grain `DataLoaderIterator` takes the raw bytes)."""

    def __init__(self, iterator):
        self.iterator = iterator

    def set_state(self, state: bytes) -> None:
        if isinstance(self.iterator, grain.DataLoaderIterator):
            self.iterator.set_state(state)
        else:
            self.iterator.set_state(json.loads(state.decode() if isinstance(state, bytes) else state))

    def start_prefetch(self) -> None:
        fn = getattr(self.iterator, "start_prefetch", None)
        if fn is not None:
            fn()


def has_state(iterator) -> bool:
    return iterator is not None and hasattr(iterator, "get_state") and hasattr(iterator, "set_state")


# ---- metadata ----------------------------------------------------------------------------------

def code_version() -> dict:
    """Package version, git commit of the source tree when available, library versions."""
    import flax
    import optax

    import rsunivlm_jax
    info = {"rsunivlm_jax": rsunivlm_jax.__version__, "jax": jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "orbax": getattr(ocp, "__version__", "unknown")}
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(rsunivlm_jax.__file__)))
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            info["git_commit"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def make_meta(*, experiment: Mapping[str, Any], model_config: Mapping[str, Any], mesh: Mesh, rules: Mapping,
              step: int) -> dict:
    return {
        "step": int(step), "experiment": json.loads(json.dumps(experiment, default=str)),
        "model_config": json.loads(json.dumps(model_config, default=str)),
        "mesh": {"shape": dict(mesh.shape), "axes": list(mesh.axis_names)},
        "rules": {k: (list(v) if isinstance(v, tuple) else v) for k, v in rules.items()},
        "process_count": jax.process_count(), "device_kind": jax.devices()[0].device_kind,
        "layout": LAYOUT, "code_version": code_version(),
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }


# ---- abstract targets --------------------------------------------------------------------------

def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_shardings_for(abstract_params: Any, optimizer: Optimizer, mesh: Mesh) -> TrainState:
    """`TrainState` of shardings: params as given, Adam moments like their params, counters replicated."""
    param_sh = jax.tree.map(lambda a: a.sharding, abstract_params)
    abstract_opt = jax.eval_shape(optimizer.tx.init, abstract_params)
    rep = replicated(mesh)
    opt_sh = state_shardings(abstract_opt, param_sh, abstract_params, rep)
    return TrainState(step=rep, params=param_sh, opt_state=opt_sh, opt_step=rep, nonfinite_total=rep,
                      nonfinite_run=rep)


def abstract_state(abstract_params: Any, optimizer: Optimizer, shardings: TrainState) -> TrainState:
    """`TrainState` of `jax.ShapeDtypeStruct`s carrying `shardings` (restore target)."""
    abstract_opt = jax.eval_shape(optimizer.tx.init, abstract_params)
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=shardings.step)
    opt = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_opt,
                       shardings.opt_state)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_params,
                          shardings.params)
    return TrainState(step=scalar, params=params, opt_state=opt, opt_step=scalar, nonfinite_total=scalar,
                      nonfinite_run=scalar)


# ---- the manager -------------------------------------------------------------------------------

def _abs(path: str) -> str:
    return path if "://" in str(path) else os.path.abspath(path)


class Checkpointer:
    """A thin layer over `ocp.CheckpointManager` that knows the four items of a training run."""

    def __init__(self, directory: str, *, keep: int = 3, every: int = 1000, async_save: bool = True,
                 read_only: bool = False):
        self.directory = _abs(directory)  # local path or a URL Orbax understands (gs://...)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=max(1, every), enable_async_checkpointing=async_save,
            create=not read_only, read_only=read_only)
        self.manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def reached_preemption(self, step: int) -> bool:
        return bool(self.manager.reached_preemption(step))

    def save(self, step: int, state: TrainState, *, data_iter=None, meta: Mapping[str, Any] | None = None,
             force: bool = False) -> bool:
        """Saves (asynchronously) when `step` is on the interval or `force`; returns whether it did."""
        items = {
            "params": ocp.args.StandardSave(state.params),
            "opt_state": ocp.args.StandardSave({"optimizer": state.opt_state,
                                                "counters": state.counters()}),
            "meta": ocp.args.JsonSave(dict(meta or {}, step=int(step))),
        }
        if has_state(data_iter):
            items["data_iter"] = grain.checkpoint.CheckpointSave(IteratorSnapshot(data_iter))
        return bool(self.manager.save(step, args=ocp.args.Composite(**items), force=force))

    def item_names_at(self, step: int) -> set[str]:
        path = epath.Path(self.directory) / str(step)
        return {n for n in ITEMS if (path / n).is_dir()}

    def restore(self, step: int, target: TrainState, *, data_iter=None) -> tuple[TrainState, dict]:
        """Restores params, optimiser state, counters (and the iterator, in place) onto `target`'s
        shardings. A missing iterator file (e.g. a different process count) is reported, not fatal."""
        opt_target = {"optimizer": target.opt_state, "counters": target.counters()}
        items = {"params": ocp.args.StandardRestore(target.params),
                 "opt_state": ocp.args.StandardRestore(opt_target),
                 "meta": ocp.args.JsonRestore()}
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if has_state(data_iter):
            if "data_iter" in self.item_names_at(step):
                try:
                    self.manager.restore(step, args=ocp.args.Composite(
                        data_iter=grain.checkpoint.CheckpointRestore(IteratorRestoreTarget(data_iter))))
                except ValueError as e:  # no file for this process index / count
                    log.warning("data iterator state not restored (%s); the data stream restarts", e)
            else:
                log.warning("checkpoint %d has no data iterator state; the data stream restarts", step)
        opt = restored["opt_state"]
        state = TrainState.from_parts(restored["params"], opt["optimizer"], opt["counters"])
        return state, dict(restored["meta"])

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        restored = self.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
        return restored["params"]

    def read_meta(self, step: int) -> dict:
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def checkpoint_dir_of(path: str) -> str:
    """A training workdir (`<path>/checkpoints`) or a checkpoint-manager directory itself."""
    sub = epath.Path(path) / "checkpoints"
    return str(sub) if sub.is_dir() else str(path)
