"""The training loop: mesh, sharded state, jitted step, metrics, held-out eval, checkpoints, resume.

    from rsunivlm_jax.train import trainer
    summary = trainer.train(config, workdir)     # config: an ml-collections ConfigDict (configs/)

What happens:

1. Model config from `config.model` (a preset + overrides), an Auto-axis mesh from `config.mesh`,
   logical-axis rules from `config.sharding`; parameter shardings from the abstract model.
2. Inputs: Grain datasets from `config.data` (each process reads its own shard; batches become
   global arrays via `jax.make_array_from_process_local_data`), or `inputs=` given by the caller.
3. State: if `<workdir>/checkpoints` has a step, everything is restored from the latest one
   (parameters, optimiser state, counters, data iterator) onto the current mesh; otherwise
   parameters come from `config.init` (random, a converted checkpoint, or a stage-1 run up-cycled
   to G-MoE) and the optimiser state is created sharded.
   With `lora.rank > 0` (`rsunivlm_jax.lora.train`) the parameters are LoRA adapters: the state,
   optimiser and checkpoints hold the adapters only, the frozen base is loaded once beside them.
4. `jax.jit(train_step, in_shardings=(state, batch), out_shardings=(state, replicated),
   donate_argnums=0)`; the loop reads each step's metrics one step late so the host never stalls
   the device queue; logs every `train.log_every` steps (JSONL, TensorBoard, tqdm with ETA);
   evaluates the held-out loss every `eval.every` steps; checkpoints every `ckpt.every` steps, at
   the end, and on SIGTERM (preemption), then exits cleanly. The step call runs under
   `jax.transfer_guard(train.transfer_guard)` ("disallow" by default): batches go in with
   `jax.make_array_from_process_local_data` and metrics come out with `jax.device_get`, so an
   implicit host<->device transfer slipped into the hot loop raises instead of stalling it.
5. Non-finite loss or gradients: the step is skipped and counted; no periodic checkpoint is written
   while the latest step was skipped; after `train.max_consecutive_nonfinite` skips in a row the
   run stops with `TrainingDiverged`, without saving, so the last checkpoint stays the last good one.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import rsunivlm_jax as rs
from rsunivlm_jax import fileio
from rsunivlm_jax import routing
from rsunivlm_jax import checkpoints
from rsunivlm_jax import sharding as shd
from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.lora import train as lora_train
from rsunivlm_jax.train import checkpoint as ckpt_lib
from rsunivlm_jax.train import data as data_lib
from rsunivlm_jax.train import metrics as metrics_lib
from rsunivlm_jax.train import optim as optim_lib
from rsunivlm_jax.train import step as step_lib
from rsunivlm_jax.train.upcycle import upcycle_sharded

log = logging.getLogger(__name__)

BATCH_NDIMS = {"input_ids": 2, "attention_mask": 2, "loss_mask": 2, "pixel_values": 5, "num_images": 1,
               "granularity": 1}


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; the last checkpoint is the last good state."""


# ---- configuration -----------------------------------------------------------------------------

INIT_PRESET = "init"  # model.preset: the architecture of the checkpoint at init.path


def model_config_from(cfg: Mapping[str, Any], init: Mapping[str, Any] | None = None) -> ModelConfig:
    """ModelConfig from the `model` section of an experiment config: a preset, the fields above, then
    `overrides` (nested `ModelConfig.replace` arguments, e.g. ``{"decoder": {"vocab_size": 552}}``).
    The preset "init" is the model of the checkpoint at `init.path` (`init`: the config's init section)."""
    if cfg["preset"] == INIT_PRESET:
        path = (init or {}).get("path")
        if not path:
            raise ValueError('model.preset="init" takes the model from init.path; set --config.init.path')
        model = ModelConfig.from_dict(checkpoints.read_meta(path)["model_config"])
    else:
        model = rs.presets.get(cfg["preset"])
    kw: dict[str, Any] = {"dtype": cfg.get("dtype", model.dtype), "param_dtype": cfg.get("param_dtype", model.param_dtype),
                          "remat_policy": cfg.get("remat_policy", model.remat_policy)}
    kw["gmoe_dispatch"] = cfg.get("dispatch", model.gmoe_dispatch)
    if cfg.get("num_experts") is not None:
        kw["gmoe"] = {"num_experts": int(cfg["num_experts"])}
    if cfg.get("tie_word_embeddings") is not None:
        kw["decoder"] = {"tie_word_embeddings": bool(cfg["tie_word_embeddings"])}
    overrides = cfg.get("overrides") or {}
    extra = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(kw.get(key), dict):
            kw[key] = {**kw[key], **value}
        else:
            kw[key] = value
    return model.replace(**kw)


def architecture(model: ModelConfig) -> dict:
    """Model config fields that define the parameters (`ModelConfig.architecture`, JSON-normalised)."""
    return json.loads(json.dumps(model.architecture()))


def build_mesh(cfg: Mapping[str, Any]) -> Mesh:
    """Auto-axis mesh; a fully specified shape smaller than the device count uses the first devices."""
    shape = tuple(int(s) for s in cfg["shape"])
    devices = jax.devices()
    if -1 not in shape and math.prod(shape) < len(devices):
        devices = devices[:math.prod(shape)]
    return shd.make_mesh(shape, tuple(cfg["axes"]), devices=devices)


def config_to_dict(config) -> dict:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def maybe_initialize_distributed(*, coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None, auto: bool = False) -> None:
    """`jax.distributed.initialize` with explicit arguments, or auto-detected (TPU pod, SLURM, ...)."""
    if coordinator_address:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    elif auto:
        jax.distributed.initialize()


# ---- preemption --------------------------------------------------------------------------------

class PreemptionFlag:
    """Set by SIGTERM; the loop saves a checkpoint and exits at the next step boundary."""

    def __init__(self):
        self.flag = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.flag = True

    def should_stop(self, step: int, ckpt) -> bool:
        """Single process: the local flag. Several processes: every process must take the same
        decision at the same step, so the flags are all-gathered (plus Orbax's preemption notice)."""
        if jax.process_count() == 1:
            return self.flag
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.asarray(int(self.flag), np.int32))
        return bool(np.any(flags)) or ckpt.reached_preemption(step)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


# ---- the trainer -------------------------------------------------------------------------------

@dataclasses.dataclass
class Summary:
    status: str  # "completed" | "preempted"
    step: int
    train_loss: float | None
    eval_loss: float | None
    nonfinite_total: int
    compile_seconds: float | None
    mean_step_seconds: float | None


class Trainer:
    def __init__(self, config, workdir: str, *, inputs: data_lib.Inputs | None = None):
        self.config = config
        self.workdir = os.path.abspath(workdir)
        self.model = model_config_from(config.model, config.init)
        self.mesh = build_mesh(config.mesh)
        self.rules = shd.get_rules(config.sharding.preset)
        self.graphdef, self.abstract_params = rs.abstract_init(self.model, mesh=self.mesh, rules=self.rules)
        # LoRA (`lora.rank > 0`): the trained parameters are the adapters; the frozen base is held apart.
        self.lora = lora_train.LoraRun(config, self.model, self.mesh, self.rules) if lora_train.enabled(config) else None
        if self.lora is not None:
            self.graphdef, self.abstract_params = self.lora.graphdef, self.lora.abstract_params
        self.total_steps = int(config.train.steps)
        self.global_batch = int(config.train.global_batch)
        n_batch = math.prod(self.mesh.shape[a] for a in ((self.rules["batch"],) if isinstance(self.rules["batch"], str)
                                                          else self.rules["batch"]))
        if self.global_batch % n_batch:
            raise ValueError(f"train.global_batch={self.global_batch} must be divisible by the batch-sharding mesh "
                             f"axes {self.rules['batch']} of size {n_batch}")
        if self.global_batch % int(config.train.micro_batches):
            raise ValueError(f"train.global_batch={self.global_batch} must be divisible by "
                             f"train.micro_batches={config.train.micro_batches}")
        self.optimizer = optim_lib.make_optimizer(optim_lib.OptimSpec.from_config(config.optim, self.total_steps),
                                                  self.abstract_params)
        self.state_sh = ckpt_lib.state_shardings_for(self.abstract_params, self.optimizer, self.mesh)
        self.rep = ckpt_lib.replicated(self.mesh)
        self.batch_sh = {k: shd.data_sharding(self.mesh, self.rules, n) for k, n in BATCH_NDIMS.items()}
        self._inputs = inputs
        self.is_main = jax.process_index() == 0
        self.transfer_guard = str(config.train.transfer_guard)
        # The pipeline groups batches by granularity: the step may then run one expert per batch.
        self.homogeneous_batches = str(config.data.get("grouping", "mixed")) == "granularity"

    # -- pieces --

    def trained_parts(self) -> dict[str, bool]:
        parts = {p: False for p in optim_lib.PARTS}
        for path, t in self.optimizer.trainable.items():
            parts[optim_lib.part_of(path)] |= t
        return parts

    def flops_per_step(self) -> float:
        return metrics_lib.flops_per_step(self.model, self.global_batch, int(self.config.data.max_text_len),
                                          int(self.config.data.max_images), self.trained_parts())

    def _scalar(self, value, dtype=jnp.int32):
        return jax.device_put(jnp.asarray(value, dtype), self.rep)

    def initial_params(self) -> Any:
        if self.lora is not None:
            return self.lora.init_adapters()
        init = self.config.init
        mode = init.mode
        if mode == "random":
            _, params = rs.init(self.model, jax.random.key(int(init.seed)), mesh=self.mesh, rules=self.rules)
            return params
        if not init.path:
            raise ValueError(f"init.mode={mode!r} needs init.path")
        if mode == "params":
            self._check_source_model(init.path, self.model)
            params, _ = checkpoints.load_params(init.path, self.abstract_params)
            return params
        if mode == "upcycle":
            source = self._source_model(init.path)
            _, abstract_src = rs.abstract_init(source, mesh=self.mesh, rules=self.rules)
            params, _ = checkpoints.load_params(init.path, abstract_src)
            target_sh = jax.tree.map(lambda a: a.sharding, self.abstract_params)
            return upcycle_sharded(params, source, self.model, target_sh)
        raise ValueError(f"init.mode={mode!r}; expected 'random', 'params' or 'upcycle'")

    def _source_model(self, path: str) -> ModelConfig:
        meta = checkpoints.read_meta(path)
        cfg = meta.get("model_config")
        if cfg:
            return ModelConfig.from_dict(cfg).replace(runtime=self.model.runtime)
        if self.config.init.source_preset:
            return rs.presets.get(self.config.init.source_preset).replace(runtime=self.model.runtime)
        raise ValueError(f"{path}: no model_config in its meta; set init.source_preset")

    def _check_source_model(self, path: str, model: ModelConfig) -> None:
        cfg = checkpoints.read_meta(path).get("model_config")
        if cfg and architecture(ModelConfig.from_dict(cfg)) != architecture(model):
            raise ValueError(f"{path}: its model config differs from this run's; use init.mode='upcycle' to go "
                             "from a dense to a G-MoE model")

    def build_inputs(self) -> data_lib.Inputs:
        if self._inputs is not None:
            return self._inputs
        vocab_dir = self.config.init.path if self.config.init.mode in ("upcycle", "params") else None
        return data_lib.build_inputs(self.config, self.model, self.workdir, vocab_source_dir=vocab_dir)

    def compile_steps(self):
        if self.lora is not None:
            return self.lora.compile_steps(self)
        tc = self.config.train
        train_step = step_lib.make_train_step(
            self.graphdef, self.optimizer, num_experts=self.model.gmoe.num_experts,
            micro_batches=int(tc.micro_batches), expert_update=self.config.optim.expert_update,
            model_config=self.model, homogeneous_batches=self.homogeneous_batches, mesh=self.mesh, rules=self.rules)
        train_fn = jax.jit(train_step, in_shardings=(self.state_sh, self.batch_sh),
                           out_shardings=(self.state_sh, self.rep), donate_argnums=(0,))
        eval_step = step_lib.make_eval_step(self.graphdef, num_experts=self.model.gmoe.num_experts,
                                            mesh=self.mesh, rules=self.rules)
        eval_fn = jax.jit(eval_step, in_shardings=(self.state_sh.params, self.batch_sh), out_shardings=self.rep)
        return train_fn, eval_fn

    def meta(self, step: int) -> dict:
        meta = ckpt_lib.make_meta(experiment=config_to_dict(self.config), model_config=self.model.to_dict(),
                                  mesh=self.mesh, rules=self.rules, step=step)
        return meta if self.lora is None else {**meta, **self.lora.meta()}

    def evaluate(self, eval_fn, params, make_eval) -> dict | None:
        if make_eval is None or int(self.config.eval.batches) <= 0:
            return None
        it = make_eval()
        total = None
        for _ in range(int(self.config.eval.batches)):
            try:
                batch = next(it)
            except StopIteration:
                break
            stats = eval_fn(params, data_lib.to_global(batch, self.batch_sh, self.global_batch))
            total = stats if total is None else total + stats
        if total is None:
            return None
        total = jax.device_get(total)
        out = {"loss": float(total.loss_sum / max(total.num_targets, 1.0)), "num_targets": float(total.num_targets)}
        for g, (s, n) in enumerate(zip(total.gran_loss_sum, total.gran_targets)):
            if n > 0:
                out[f"loss_g{g}"] = float(s / n)
        return out

    # -- the loop --

    def run(self) -> Summary:
        cfg = self.config
        os.makedirs(self.workdir, exist_ok=True)
        ckpt = ckpt_lib.Checkpointer(cfg.ckpt.dir or os.path.join(self.workdir, "checkpoints"), keep=int(cfg.ckpt.keep),
                                     every=int(cfg.ckpt.every), async_save=bool(cfg.ckpt.async_save))
        latest = ckpt.latest_step()
        if latest is not None:  # compatibility first: a refused re-run must leave the run's files as they were
            saved = ckpt.read_meta(latest).get("model_config")
            if saved and architecture(ModelConfig.from_dict(saved)) != architecture(self.model):
                ckpt.close()
                raise ValueError(f"{ckpt.directory}/{latest}: the checkpoint's model differs from this config's")
        if self.is_main:
            fileio.atomic_write_json(os.path.join(self.workdir, "config.json"),
                                     {"experiment": config_to_dict(cfg), "model_config": self.model.to_dict()}, indent=1)
        writer = metrics_lib.MetricsWriter(self.workdir, enabled=self.is_main, tensorboard=bool(cfg.metrics.tensorboard))
        inputs = self.build_inputs()
        train_iter = iter(inputs.train)
        if latest is not None:
            target = ckpt_lib.abstract_state(self.abstract_params, self.optimizer, self.state_sh)
            state, meta = ckpt.restore(latest, target, data_iter=train_iter)
            writer.truncate_after(latest)
            log.info("resumed from step %d", latest)
        else:
            params = self.initial_params()
            opt_state = jax.jit(self.optimizer.tx.init, out_shardings=self.state_sh.opt_state)(params)
            zero = self._scalar(0)
            state = step_lib.TrainState(step=zero, params=params, opt_state=opt_state, opt_step=self._scalar(0),
                                        nonfinite_total=self._scalar(0), nonfinite_run=self._scalar(0))
        start = int(jax.device_get(state.step))
        train_fn, eval_fn = self.compile_steps()
        sliced = (self.homogeneous_batches and self.model.gmoe.num_experts > 1
                  and self.config.optim.expert_update == "selected" and self.lora is None)

        flops = self.flops_per_step()
        peak = cfg.metrics.peak_flops_per_device or metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind)
        extra_per_image = self.model.tokens_per_image - 1
        progress = metrics_lib.Progress(self.total_steps, start, enabled=bool(cfg.train.progress) and self.is_main)
        log_every = max(1, int(cfg.train.log_every))
        max_bad = int(cfg.train.max_consecutive_nonfinite)
        window: list[dict] = []
        step_times: list[float] = []
        compile_s: float | None = None
        last_train = last_eval = None
        status = "completed"
        bad_run = 0  # non-finite steps in a row, as of the last handled step
        pending = None
        t_last = time.perf_counter()

        def handle(step_no: int, dev_metrics) -> None:
            nonlocal t_last, compile_s, last_train, bad_run
            m = jax.device_get(dev_metrics)
            now = time.perf_counter()
            dt, t_last = now - t_last, now
            m = {k: np.asarray(v) for k, v in m.items()}
            if compile_s is None and step_no == start + 1:
                compile_s, m["seconds"] = dt, None  # includes compilation: not a step time
            else:
                step_times.append(dt)
                m["seconds"] = dt
            window.append(m)
            if int(m["mixed_granularity"]) and sliced:  # another host's rows differed (not applied)
                raise routing.MixedBatchError(
                    f"step {step_no}: the global batch mixes experts {np.flatnonzero(m['selected_experts']).tolist()} "
                    "although data.grouping='granularity' promised one per batch; the update was not applied")
            if int(m["skipped"]):
                progress.write(f"step {step_no}: non-finite loss/gradient, update skipped "
                               f"({int(m['nonfinite_run'])} in a row, {int(m['nonfinite_total'])} total)")
            bad_run = int(m["nonfinite_run"])
            if bad_run >= max_bad:
                raise TrainingDiverged(f"{int(m['nonfinite_run'])} non-finite steps in a row at step {step_no}; "
                                       f"stopping (last checkpoint: {ckpt.latest_step()})")
            if step_no % log_every == 0 or step_no == self.total_steps:
                last_train = self._log(writer, step_no, window, flops, peak, extra_per_image)
                window.clear()
            progress.update(1, loss=float(m["loss"]))

        try:
            with PreemptionFlag() as preempt:
                for step_no in range(start + 1, self.total_steps + 1):
                    try:
                        host_batch = next(train_iter)
                    except StopIteration:
                        log.warning("training data exhausted at step %d", step_no - 1)
                        break
                    if sliced:
                        routing.check_homogeneous(host_batch["granularity"],
                                                  where=f"step {step_no} (data.grouping='granularity')")
                    batch = data_lib.to_global(host_batch, self.batch_sh, self.global_batch)
                    with jax.transfer_guard(self.transfer_guard):  # explicit transfers only
                        state, dev_metrics = train_fn(state, batch)
                    if pending is not None:
                        handle(*pending)
                    pending = (step_no, dev_metrics)
                    stop = preempt.should_stop(step_no, ckpt)
                    at_eval = int(cfg.eval.every) > 0 and step_no % int(cfg.eval.every) == 0
                    at_ckpt = step_no % int(cfg.ckpt.every) == 0 or step_no == self.total_steps
                    if stop or at_eval or at_ckpt:
                        handle(*pending)
                        pending = None
                    if at_eval or (step_no == self.total_steps and inputs.make_eval is not None):
                        last_eval = self.evaluate(eval_fn, state.params, inputs.make_eval)
                        if last_eval is not None:
                            writer.write(step_no, last_eval, split="eval")
                            progress.write(f"step {step_no}: eval loss {last_eval['loss']:.4f}")
                        t_last = time.perf_counter()
                    if stop or (at_ckpt and bad_run == 0):
                        ckpt.save(step_no, state, data_iter=train_iter, meta=self.meta(step_no), force=True)
                    elif at_ckpt:
                        progress.write(f"step {step_no}: not checkpointing inside a run of {bad_run} skipped steps")
                    if stop:
                        status = "preempted"
                        progress.write(f"preempted: saved step {step_no}")
                        break
                if pending is not None:
                    handle(*pending)
                    pending = None
        finally:
            progress.close()
            ckpt.close()
            writer.close()
        final_step = int(jax.device_get(state.step))
        self.state = state
        return Summary(status=status, step=final_step, train_loss=last_train, eval_loss=(last_eval or {}).get("loss"),
                       nonfinite_total=int(jax.device_get(state.nonfinite_total)), compile_seconds=compile_s,
                       mean_step_seconds=float(np.mean(step_times)) if step_times else None)

    def _log(self, writer, step_no, window, flops, peak, extra_per_image) -> float | None:
        loss_sum = sum(float(m["loss_sum"]) for m in window if not int(m["skipped"]))
        targets = sum(float(m["num_targets"]) for m in window if not int(m["skipped"]))
        timed = [m for m in window if m["seconds"] is not None]
        secs = sum(m["seconds"] for m in timed)
        tokens = sum(float(m["real_tokens"]) + float(m["num_images"]) * extra_per_image for m in timed)
        timed_targets = sum(float(m["num_targets"]) for m in timed)
        gl = sum(m["gran_loss_sum"] for m in window if not int(m["skipped"]))
        gt = sum(m["gran_targets"] for m in window if not int(m["skipped"]))
        step_time = secs / len(timed) if timed else None
        loss = loss_sum / targets if targets > 0 else None
        row = {"loss": loss, "learning_rate": float(window[-1]["learning_rate"]),
               "grad_norm": float(np.mean([float(m["grad_norm"]) for m in window])),
               "step_time": step_time, "tokens_per_s": tokens / secs if secs > 0 else None,
               "target_tokens_per_s": timed_targets / secs if secs > 0 else None,
               "nonfinite_total": int(window[-1]["nonfinite_total"]), "num_targets": targets,
               "model_tflops_per_step": flops / 1e12}
        if isinstance(gl, np.ndarray):
            for g in range(len(gl)):
                if gt[g] > 0:
                    row[f"loss_g{g}"] = float(gl[g] / gt[g])
        u = metrics_lib.mfu(flops, step_time, peak, jax.device_count()) if step_time else None
        if u is not None:
            row["mfu"] = u
        writer.write(step_no, row, split="train")
        return loss


def train(config, workdir: str, *, inputs: data_lib.Inputs | None = None) -> Summary:
    """Runs (or resumes) the training described by `config` in `workdir`."""
    return Trainer(config, workdir, inputs=inputs).run()
