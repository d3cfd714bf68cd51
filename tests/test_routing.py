"""G-MoE routing: every row of any batch runs its own expert, through every entry point."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsunivlm_jax as rs
from rsunivlm_jax import routing
from rsunivlm_jax.train import step as step_lib
from tests.train import helpers as H

STRATEGIES = ["auto", "dense_mask", "ragged", "gather"]


@pytest.fixture(autouse=True)
def _highest():
    with jax.default_matmul_precision("highest"):
        yield


def _mixed_inputs(cfg, num_images, b=4, t=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, cfg.decoder.vocab_size - 2, (b, t)).astype(np.int32)
    ids[:, 3:3 + num_images] = cfg.image_token_id
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # left padding
    mask[3, :1] = 0
    px = rng.uniform(-1, 1, (b, num_images, cfg.vision.image_size, cfg.vision.image_size, 3)).astype(np.float32)
    return ids, mask, px, np.array([2, 0, 1, 2], np.int32)


@pytest.mark.parametrize("num_images", [1, 2])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mixed_batch_forward_equals_per_row_runs(strategy, num_images):
    cfg = rs.presets.get("tiny").replace(gmoe_dispatch=strategy)
    graphdef, params = rs.init(cfg, 0)
    ids, mask, px, g = _mixed_inputs(cfg, num_images)
    batch = np.asarray(rs.forward(graphdef, params, ids, px, g, mask, output="text"))
    outer = jax.jit(lambda p, i, x, gr, m: rs.forward(graphdef, p, i, x, gr, m, output="text"))
    traced = np.asarray(outer(params, ids, px, g, mask))  # granularity traced by the user's jit
    for b in range(len(g)):
        row = np.asarray(rs.forward(graphdef, params, ids[b:b + 1], px[b:b + 1], g[b:b + 1], mask[b:b + 1],
                                    output="text"))[0]
        other = np.asarray(rs.forward(graphdef, params, ids[b:b + 1], px[b:b + 1], (g[b:b + 1] + 1) % 3,
                                      mask[b:b + 1], output="text"))[0]
        real = mask[b] > 0
        assert np.abs(batch[b][real] - row[real]).max() <= 1e-5, (strategy, b)
        assert np.abs(traced[b][real] - row[real]).max() <= 1e-5, (strategy, b)
        assert np.abs(other[real] - row[real]).max() > 1e-3  # another expert would be visibly wrong


def _loss(graphdef, params, batch):
    logits = rs.forward(graphdef, params, batch["input_ids"], batch["pixel_values"], batch["granularity"],
                        batch["attention_mask"], output="text")
    logp = jax.nn.log_softmax(logits[:, :-1])
    tgt = jnp.take_along_axis(logp, batch["input_ids"][:, 1:, None], axis=-1)[..., 0]
    return -jnp.sum(tgt * batch["loss_mask"][:, 1:])


@pytest.mark.parametrize("strategy", ["auto", "ragged"])
def test_mixed_batch_gradients_equal_per_row_sum(strategy):
    cfg = H.tiny(dispatch=strategy)
    graphdef, params = rs.init(cfg, 1)
    ids, mask, px, g = _mixed_inputs(cfg, 1)
    g = np.array([2, 0, 2, 0], np.int32)  # expert 1 unused
    batch = {"input_ids": ids, "attention_mask": mask, "loss_mask": mask, "pixel_values": px, "granularity": g}
    grads = jax.jit(jax.grad(lambda p, bt: _loss(graphdef, p, bt)))(params, batch)
    rows = [jax.grad(lambda p, b=b: _loss(graphdef, p, {k: v[b:b + 1] for k, v in batch.items()}))(params)
            for b in range(4)]
    ref = jax.tree.map(lambda *x: sum(x), *rows)
    for path, a in H.flat(grads).items():
        np.testing.assert_allclose(a, H.flat(ref)[path], atol=1e-5, rtol=1e-4, err_msg=path)
    up = H.flat(grads)["decoder/layers/mlp/up_proj/kernel"]
    assert np.abs(up[:, 1]).max() == 0 and np.abs(up[:, 0]).max() > 0 and np.abs(up[:, 2]).max() > 0


def test_full_step_on_a_mixed_batch_changes_only_routed_experts():
    cfg = H.tiny()
    graphdef, opt, state = H.init_state(cfg)
    fn = jax.jit(step_lib.make_train_step(graphdef, opt, num_experts=3))
    batch = H.batches(cfg, global_batch=4, grouping="mixed").batch(0)
    batch["granularity"] = np.array([0, 2, 2, 0], np.int32)
    new, m = fn(state, H.to_device(batch))
    assert int(m["skipped"]) == 0 and list(np.asarray(m["selected_experts"])) == [1, 0, 1]
    before, after = H.flat((state.params, state.opt_state)), H.flat((new.params, new.opt_state))
    paths = [p for p in after if p.endswith("mlp/gate_proj/kernel")]
    assert len(paths) >= 3  # the parameter and its two Adam moments
    for p in paths:
        np.testing.assert_array_equal(after[p][:, 1], before[p][:, 1])
        assert not np.array_equal(after[p][:, 0], before[p][:, 0]) and not np.array_equal(after[p][:, 2],
                                                                                            before[p][:, 2])


def test_one_expert_step_refuses_a_mixed_batch():
    cfg = H.tiny()
    graphdef, opt, state = H.init_state(cfg)
    fn = jax.jit(step_lib.make_train_step(graphdef, opt, num_experts=3, model_config=cfg, homogeneous_batches=True))
    batch = H.batches(cfg, global_batch=4, grouping="mixed").batch(0)
    batch["granularity"] = np.array([1, 1, 0, 1], np.int32)
    new, m = fn(state, H.to_device(batch))
    assert int(m["mixed_granularity"]) == 1 and int(m["skipped"]) == 1 and int(new.opt_step) == 0
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(routing.MixedBatchError, match=r"expert 0: rows \[2\]; expert 1: rows \[0, 1, 3\]"):
        routing.check_homogeneous(batch["granularity"], where="step 1")
    assert routing.check_homogeneous([2, 2]) == 2


def test_expert_slices_follow_the_logical_axis():
    cfg = rs.presets.get("tiny")
    graphdef, params = rs.init(cfg, 0)
    axes = routing.expert_axes(graphdef, params)
    flat = H.flat(axes)
    assert {p for p, a in flat.items() if a >= 0} == {f"decoder/layers/mlp/{n}_proj/kernel"
                                                      for n in ("gate", "up", "down")}
    part = routing.take_expert(params, axes, 2)
    k = params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"]
    np.testing.assert_array_equal(np.asarray(part["decoder"]["layers"]["mlp"]["up_proj"]["kernel"])[:, 0],
                                  np.asarray(k)[:, 2])
    back = routing.put_expert(params, jax.tree.map(lambda x: x + 1 if x.ndim == 4 else x, part), axes, 2)
    got = np.asarray(back["decoder"]["layers"]["mlp"]["up_proj"]["kernel"])
    np.testing.assert_array_equal(got[:, 2], np.asarray(k)[:, 2] + 1)
    np.testing.assert_array_equal(got[:, :2], np.asarray(k)[:, :2])
