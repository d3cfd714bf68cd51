"""Optimiser: schedule shape, weight-decay and part labels, per-part learning rates, frozen parts."""
import math

import jax
import numpy as np
import pytest

import rsunivlm_jax as rs
from rsunivlm_jax.train import optim, step as step_lib

from tests.train import helpers as H


def test_warmup_cosine_values():
    f = optim.warmup_cosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert float(f(0)) == 0.0
    assert float(f(5)) == pytest.approx(0.5)
    assert float(f(10)) == pytest.approx(1.0)
    assert float(f(60)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-6)
    assert float(f(110)) == pytest.approx(0.1)
    assert float(f(500)) == pytest.approx(0.1)
    assert float(optim.warmup_cosine(0, 10)(0)) == 1.0


def test_warmup_from_ratio():
    spec = optim.OptimSpec.from_config({"lr": 1e-5, "warmup_ratio": 0.03, "clip": 0.0}, total_steps=1000)
    assert spec.warmup_steps == 30 and spec.clip is None


def test_decay_mask_and_parts():
    _, params = rs.abstract_init(H.tiny())
    decay = H.flat(optim.decay_mask(params, optim.DEFAULT_NO_DECAY))
    decay = {k: bool(v) for k, v in decay.items()}
    for path in ("decoder/layers/input_layernorm/scale", "decoder/norm/scale", "vision/layers/layer_norm1/scale",
                 "vision/post_layernorm/bias", "decoder/layers/self_attn/q_proj/bias", "connector/linear_1/bias",
                 "decoder/embed_tokens/embedding", "vision/embeddings/position_embedding/embedding",
                 "connector/image_newline"):
        assert decay[path] is False, path
    for path in ("decoder/layers/self_attn/q_proj/kernel", "decoder/layers/mlp/up_proj/kernel", "lm_head/kernel",
                 "vision/embeddings/patch_embedding/kernel", "connector/linear_2/kernel"):
        assert decay[path] is True, path
    assert optim.part_of("lm_head/kernel") == "decoder"
    assert optim.part_of("vision/layers/mlp/fc1/kernel") == "vision"
    with pytest.raises(ValueError, match="matches no parameter"):
        optim.trainable_mask(params, ("nothing/.*",))


def test_part_learning_rates_and_frozen_vision_without_state():
    cfg = H.tiny()
    graphdef, params = rs.init(cfg, 0)
    opt = H.optimizer(params, lr=1e-3, connector_lr=5e-4, weight_decay=0.0, clip=None,
                      trainable=(r"connector/.*", r"decoder/.*", r"lm_head/.*"))
    state = step_lib.init_state(params, opt)
    # No optimiser state for the frozen vision tower: 2 moments per trainable scalar + step counts.
    n_train = sum(x.size for p, x in H.flat(params).items() if not p.startswith("vision/"))
    assert optim.count_state(state.opt_state) - n_train * 2 < 10
    state_paths = [optim.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
    assert not any("vision" in p for p in state_paths)

    fn = jax.jit(step_lib.make_train_step(graphdef, opt, num_experts=3))
    new, metrics = fn(state, H.to_device(H.batches(cfg).batch(0)))
    before, after = H.flat(params), H.flat(new.params)
    for path in before:
        if path.startswith("vision/"):
            np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    # Adam's first step moves each parameter by ~lr * sign(g) (|g| >> eps): per-part rates.
    def typical_step(prefix):
        d = np.concatenate([np.abs(after[p] - before[p]).ravel() for p in before if p.startswith(prefix)])
        return np.median(d[d > 0])
    assert typical_step("connector/") == pytest.approx(5e-4, rel=0.05)
    assert typical_step("decoder/layers/self_attn") == pytest.approx(1e-3, rel=0.05)
    assert float(metrics["learning_rate"]) == pytest.approx(1e-3)


@pytest.mark.parametrize("grad_scale", [0.01, 10.0])  # below and above the clipping threshold
def test_clip_and_adamw_match_torch(grad_scale):
    """Three steps of our transformation (global-norm clip at 1.0, AdamW with decay on kernels only)
    against torch `clip_grad_norm_` + `torch.optim.AdamW` (what the HF Trainer runs), float32.
    eps 0.1: with a tiny eps Adam is invariant to the clipping scale and the clip would go untested."""
    import torch

    rng = np.random.default_rng(0)
    params = {"decoder": {"layers": {"mlp": {"up_proj": {"kernel": rng.normal(size=(6, 5)).astype(np.float32)}}},
                          "norm": {"scale": rng.normal(size=(5,)).astype(np.float32)}}}
    grads = [jax.tree.map(lambda p: (grad_scale * rng.normal(size=p.shape)).astype(np.float32), params)
             for _ in range(3)]
    lr, wd = 1e-2, 0.1
    opt = H.optimizer(params, lr=lr, eps=0.1, weight_decay=wd, clip=1.0, total_steps=10**9, warmup_steps=0)
    ours, state = params, opt.tx.init(params)
    for g in grads:
        updates, state = opt.tx.update(g, state, ours)
        ours = jax.tree.map(lambda p, u: p + u, ours, updates)

    kernel = torch.nn.Parameter(torch.from_numpy(params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"].copy()))
    scale = torch.nn.Parameter(torch.from_numpy(params["decoder"]["norm"]["scale"].copy()))
    t_opt = torch.optim.AdamW([{"params": [kernel], "weight_decay": wd}, {"params": [scale], "weight_decay": 0.0}],
                              lr=lr, betas=(0.9, 0.999), eps=0.1)
    for g in grads:
        kernel.grad = torch.from_numpy(g["decoder"]["layers"]["mlp"]["up_proj"]["kernel"].copy())
        scale.grad = torch.from_numpy(g["decoder"]["norm"]["scale"].copy())
        torch.nn.utils.clip_grad_norm_([kernel, scale], 1.0)
        t_opt.step()
    # (total_steps 1e9: the cosine multiplier is 1 to float32 precision, torch's lr is constant.)
    np.testing.assert_allclose(np.asarray(ours["decoder"]["norm"]["scale"]), scale.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours["decoder"]["layers"]["mlp"]["up_proj"]["kernel"]),
                               kernel.detach().numpy(), atol=1e-6)
