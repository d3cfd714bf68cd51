"""LoRA in the trainer (`rsunivlm_jax.train.trainer`): what changes when `config.lora.rank > 0`.

* The trained parameters (`TrainState.params`, optimiser state, checkpoints) are the adapters
  alone, laid out and sharded by the same logical-axis rules as their kernels. Everything else of
  the trainer (optimiser, schedules, NaN guard, Orbax checkpoints with the data iterator, exact
  resume, metrics) is unchanged.
* The base model is frozen and held once, in `lora.base_dtype` (default: `model.param_dtype`),
  loaded from `init.path` (a converted checkpoint or a training run; `init.mode="params"`) or
  randomly initialised (`init.mode="random"`, for tests). It is never written to a LoRA run's
  checkpoints: resuming reloads it from `init.path`, and the run's meta records that path.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

import rsunivlm_jax as rs
from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.lora import adapters as adapters_lib
from rsunivlm_jax.lora import step as step_lib
from rsunivlm_jax.lora.config import LoraConfig
from rsunivlm_jax.train.optim import map_with_path

EXPERT_AXIS_NAME = "expert"


def enabled(config) -> bool:
    """Whether an experiment config asks for LoRA (`lora.rank > 0`)."""
    section = config.get("lora") if hasattr(config, "get") else None
    return bool(section) and int(section.get("rank") or 0) > 0


def lora_config(config) -> LoraConfig:
    return LoraConfig.from_dict(dict(config.lora))


def expert_axes(model: ModelConfig, lora: LoraConfig) -> Any:
    """Int tree like the adapters: the axis with logical name "expert" (G-MoE adapters), else -1."""
    from flax import nnx
    _, state, _ = adapters_lib.abstract_model(model, lora)
    axes = {"/".join(map(str, p)): tuple(v.get_metadata()["logical_axes"]) for p, v in nnx.to_flat_state(state)}
    return map_with_path(lambda p, _: axes[p].index(EXPERT_AXIS_NAME) if EXPERT_AXIS_NAME in axes[p] else -1,
                         nnx.to_pure_dict(state))


class LoraRun:
    """The LoRA pieces of one training run (built by the trainer when `enabled(config)`)."""

    def __init__(self, config, model: ModelConfig, mesh, rules: Mapping):
        self.config = config
        self.lora = lora_config(config)
        base_dtype = config.lora.get("base_dtype") or model.param_dtype
        self.model = model
        self.base_model = model.replace(param_dtype=str(base_dtype))
        self.mesh, self.rules = mesh, rules
        self.graphdef = adapters_lib.graphdef(self.base_model, self.lora)
        self.abstract_params = adapters_lib.abstract_init(self.base_model, self.lora, mesh=mesh, rules=rules)
        _, self.abstract_base = rs.abstract_init(self.base_model, mesh=mesh, rules=rules)
        self.expert_axes = expert_axes(self.base_model, self.lora)
        self.base = None

    def init_adapters(self) -> Any:
        return adapters_lib.init(self.base_model, self.lora, jax.random.key(int(self.config.init.seed)),
                                 mesh=self.mesh, rules=self.rules)

    def load_base(self, trainer) -> Any:
        """The frozen base, loaded once per run (onto the mesh, in the base dtype)."""
        if self.base is not None:
            return self.base
        init = self.config.init
        if init.mode == "random":
            _, params = rs.init(self.base_model, jax.random.key(int(init.seed)), mesh=self.mesh, rules=self.rules)
        elif init.mode == "params":
            if not init.path:
                raise ValueError("LoRA needs the base model: set init.path (a converted checkpoint or a training run)")
            trainer._check_source_model(init.path, self.model)
            from rsunivlm_jax import checkpoints
            params, _ = checkpoints.load_params(init.path, self.abstract_base)
        else:
            raise ValueError(f"init.mode={init.mode!r} with LoRA; expected 'params' (the base from init.path) or "
                             "'random'")
        self.base = params
        return params

    def compile_steps(self, trainer):
        """(train_fn(state, batch), eval_fn(adapters, batch)): jitted steps closed over the loaded base."""
        base = self.load_base(trainer)
        base_sh = jax.tree.map(lambda a: a.sharding, self.abstract_base)
        tc = self.config.train
        num_experts = self.model.gmoe.num_experts
        train_step = step_lib.make_train_step(
            self.graphdef, trainer.optimizer, num_experts=num_experts, expert_axes=self.expert_axes,
            micro_batches=int(tc.micro_batches), expert_update=self.config.optim.expert_update,
            dropout=self.lora.dropout > 0, dropout_seed=int(self.config.init.seed), mesh=self.mesh, rules=self.rules)
        train_jit = jax.jit(train_step, in_shardings=(trainer.state_sh, base_sh, trainer.batch_sh),
                            out_shardings=(trainer.state_sh, trainer.rep), donate_argnums=(0,))
        eval_step = step_lib.make_eval_step(self.graphdef, num_experts=num_experts, mesh=self.mesh, rules=self.rules)
        eval_jit = jax.jit(eval_step, in_shardings=(trainer.state_sh.params, base_sh, trainer.batch_sh),
                           out_shardings=trainer.rep)
        return (lambda state, batch: train_jit(state, base, batch),
                lambda adapters, batch: eval_jit(adapters, base, batch))

    def meta(self) -> dict:
        """What a LoRA checkpoint records besides the trainer's meta: the adapter config and the base."""
        return {"lora": self.lora.to_dict(), "base": {"path": self.config.init.path, "mode": self.config.init.mode,
                                                      "param_dtype": self.base_model.param_dtype}}


def adapter_nbytes(params: Any) -> int:
    return sum(int(jnp.size(x)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))
