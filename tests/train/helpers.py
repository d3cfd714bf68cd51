"""Shared pieces for the training tests: tiny configs, optimisers, random contract batches."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import rsunivlm_jax as rs
from rsunivlm_jax.train import data as data_lib
from rsunivlm_jax.train import optim, step as step_lib

TEXT_LEN = 24


def tiny(num_experts: int = 3, dispatch: str = "auto", **kw):
    return rs.presets.get("tiny").replace(gmoe={"num_experts": num_experts}, gmoe_dispatch=dispatch, **kw)


def optimizer(params, **kw):
    spec = dict(total_steps=100, lr=1e-3, eps=1e-6, weight_decay=0.1, clip=1.0, warmup_steps=0)
    spec.update(kw)
    return optim.make_optimizer(optim.OptimSpec(**spec), params)


def batches(cfg, global_batch=8, seed=0, **kw):
    return data_lib.RandomBatches(cfg, global_batch=global_batch, text_len=TEXT_LEN, seed=seed,
                                  process_index=0, process_count=1, **kw)


def to_device(batch):
    return {k: jnp.asarray(v) for k, v in batch.items()}


def flat(tree) -> dict:
    return {optim.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def init_state(cfg, opt_kw=None, seed=0):
    graphdef, params = rs.init(cfg, seed)
    opt = optimizer(params, **(opt_kw or {}))
    return graphdef, opt, step_lib.init_state(params, opt)
