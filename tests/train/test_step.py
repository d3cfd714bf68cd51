"""Train step: sharded == single device, gradient accumulation == big batch, G-MoE expert
updates, NaN/Inf guard."""
import jax
import numpy as np
import pytest

import rsunivlm_jax as rs
from rsunivlm_jax import sharding as shd
from rsunivlm_jax.train import checkpoint as ckpt_lib
from rsunivlm_jax.train import optim, step as step_lib

from tests.train import helpers as H

BATCH_NDIMS = {"input_ids": 2, "attention_mask": 2, "loss_mask": 2, "pixel_values": 5, "num_images": 1,
               "granularity": 1}


@pytest.fixture(autouse=True)
def _highest():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def tiny_step():
    """The tiny G-MoE model, its initial state and ONE jitted step shared by the tests (one compile)."""
    cfg = H.tiny()
    graphdef, opt, state = H.init_state(cfg)
    fn = jax.jit(step_lib.make_train_step(graphdef, opt, num_experts=3, model_config=cfg,
                                          homogeneous_batches=True))  # the trainer's path for grouped data
    return cfg, graphdef, opt, state, fn


@pytest.fixture(scope="module")
def single_device_step(tiny_step):
    """One step of the tiny G-MoE model on one device: the reference."""
    cfg, _, _, state, fn = tiny_step
    batch = H.batches(cfg).batch(1)  # granularity 1
    new, metrics = fn(state, H.to_device(batch))
    return cfg, state, batch, new, metrics


@pytest.mark.slow  # two extra compilations on the 8-device mesh
@pytest.mark.parametrize("preset", ["fsdp", "fsdp_tensor"])
def test_sharded_step_equals_single_device(single_device_step, preset, capfd):
    cfg, state0, batch, ref, ref_metrics = single_device_step
    mesh = rs.make_mesh((2, 2, 2))
    graphdef, abstract = rs.abstract_init(cfg, mesh=mesh, rules=preset)
    opt = H.optimizer(abstract)
    state_sh = ckpt_lib.state_shardings_for(abstract, opt, mesh)
    batch_sh = {k: shd.data_sharding(mesh, preset, n) for k, n in BATCH_NDIMS.items()}
    # From host copies: a device-0 array put onto a mesh can share its buffer, and donation would
    # then delete state0, which the next preset reuses.
    state = jax.device_put(jax.device_get(state0), state_sh)
    fn = jax.jit(step_lib.make_train_step(graphdef, opt, num_experts=3, model_config=cfg, mesh=mesh, rules=preset),
                 in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, ckpt_lib.replicated(mesh)),
                 donate_argnums=(0,))
    new, metrics = fn(state, jax.device_put(batch, batch_sh))
    assert "Involuntary full rematerialization" not in capfd.readouterr().err  # XLA resharded nothing by replication

    assert float(metrics["loss"]) == pytest.approx(float(ref_metrics["loss"]), abs=1e-5)
    got, want = H.flat(new.params), H.flat(ref.params)
    for path in want:
        np.testing.assert_allclose(got[path], want[path], atol=1e-5, rtol=0, err_msg=path)
    # Parameters and optimiser moments keep their shardings through the step.
    for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(new)[0], jax.tree.leaves(state_sh)):
        assert leaf.sharding.is_equivalent_to(sh, leaf.ndim), optim.path_str(path)
    spec = new.params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"].sharding.spec
    assert spec == (jax.sharding.PartitionSpec(None, None, "fsdp", None) if preset == "fsdp"
                    else jax.sharding.PartitionSpec(None, None, "fsdp", "tensor"))


@pytest.mark.slow  # two compilations of the gradient function
def test_gradient_accumulation_equals_full_batch():
    cfg = H.tiny(dispatch="dense_mask")
    graphdef, params = rs.init(cfg, 0)
    trainable = optim.trainable_mask(params, (".*",))
    batch = H.to_device(H.batches(cfg, global_batch=8, grouping="mixed").batch(0))
    full = jax.jit(step_lib.make_grad_fn(graphdef, trainable, num_experts=3))
    accum = jax.jit(step_lib.make_grad_fn(graphdef, trainable, num_experts=3, micro_batches=4))
    (g1, s1), (g4, s4) = full(params, batch), accum(params, batch)
    assert float(s4.loss_sum / s4.num_targets) == pytest.approx(float(s1.loss_sum / s1.num_targets), rel=1e-6)
    assert float(s4.num_targets) == float(s1.num_targets)
    np.testing.assert_allclose(np.asarray(s4.gran_loss_sum), np.asarray(s1.gran_loss_sum), rtol=1e-6)
    a, b = H.flat(g4), H.flat(g1)
    total = np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in b.values()))
    diff = np.sqrt(sum(np.sum(np.square(a[p] - b[p], dtype=np.float64)) for p in b))
    assert diff <= 1e-6 * total
    for path in b:
        norm = np.linalg.norm(b[path])
        # Leaves whose true gradient is zero (e.g. key biases: softmax is shift-invariant) hold only
        # rounding noise; every other leaf must match to 1e-6 relative.
        if norm > 1e-6 * total:
            assert np.linalg.norm(a[path] - b[path]) <= 1e-6 * norm, (path, np.linalg.norm(a[path] - b[path]) / norm)


def test_only_the_routed_expert_changes_in_a_grouped_step(tiny_step):
    cfg, graphdef, opt, state, fn = tiny_step  # AdamW with weight decay 0.1
    src = H.batches(cfg)
    s1, m1 = fn(state, H.to_device(src.batch(0)))  # expert 0 (moments of expert 0 now non-zero)
    s2, m2 = fn(s1, H.to_device(src.batch(1)))  # expert 1
    assert list(np.asarray(m2["selected_experts"])) == [0, 1, 0]
    for name in ("gate_proj", "up_proj", "down_proj"):
        k0, k1, k2 = (np.asarray(s.params["decoder"]["layers"]["mlp"][name]["kernel"]) for s in (state, s1, s2))
        assert not np.array_equal(k1[:, 0], k0[:, 0])  # step 1 moved expert 0 ...
        np.testing.assert_array_equal(k1[:, 1:], k0[:, 1:])  # ... and nothing else
        np.testing.assert_array_equal(k2[:, 0], k1[:, 0])  # step 2: expert 0 kept despite momentum and decay
        np.testing.assert_array_equal(k2[:, 2], k1[:, 2])
        assert not np.array_equal(k2[:, 1], k1[:, 1])
    # Adam moments of the unrouted expert are untouched too.
    mu = lambda s: H.flat(s.opt_state)  # noqa: E731
    m_before, m_after = mu(s1), mu(s2)
    moment_paths = [p for p in m_after if p.endswith("mlp/up_proj/kernel")]
    assert moment_paths
    for p in moment_paths:
        np.testing.assert_array_equal(m_after[p][:, 0], m_before[p][:, 0])


def test_sliced_expert_step_equals_the_full_masked_step(tiny_step):
    """The trainer's grouped step (only the routed expert's slice is differentiated and updated)
    gives the update of the full step with masking."""
    cfg, graphdef, opt, state, fn = tiny_step
    full = jax.jit(step_lib.make_train_step(graphdef, opt, num_experts=3))  # exact routing, masked update
    src = H.batches(cfg)
    a, b = state, state
    for i in range(3):  # experts 0, 1, 2
        a, ma = fn(a, H.to_device(src.batch(i)))
        b, mb = full(b, H.to_device(src.batch(i)))
        assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-6)
        assert float(ma["grad_norm"]) == pytest.approx(float(mb["grad_norm"]), rel=1e-5)
    fa, fb = H.flat((a.params, a.opt_state)), H.flat((b.params, b.opt_state))
    for k in fb:
        np.testing.assert_allclose(fa[k], fb[k], atol=1e-6, rtol=1e-5, err_msg=k)


@pytest.mark.slow  # one more compilation
def test_expert_update_all_lets_momentum_move_unrouted_experts(tiny_step):
    cfg, graphdef, opt, state, fn = tiny_step
    src = H.batches(cfg)
    s1, _ = fn(state, H.to_device(src.batch(0)))  # expert 0
    fn_all = jax.jit(step_lib.make_train_step(graphdef, opt, num_experts=3, expert_update="all"))
    s2_all, _ = fn_all(s1, H.to_device(src.batch(1)))  # expert 1 routed; expert 0 drifts (momentum, decay)
    k = lambda s: np.asarray(s.params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"])  # noqa: E731
    assert not np.array_equal(k(s2_all)[:, 0], k(s1)[:, 0])
    assert not np.array_equal(k(s2_all)[:, 2], k(s1)[:, 2])  # never routed, yet decayed


def test_nonfinite_step_is_skipped_and_counted(tiny_step):
    cfg, _, _, state, fn = tiny_step
    src = H.batches(cfg, nan_at=(1, 2))
    s1, _ = fn(state, H.to_device(src.batch(0)))
    s2, m2 = fn(s1, H.to_device(src.batch(1)))
    s3, m3 = fn(s2, H.to_device(src.batch(2)))
    assert int(m2["skipped"]) == 1 and not np.isfinite(float(m2["loss"]))
    assert (int(s3.nonfinite_total), int(s3.nonfinite_run), int(s3.step), int(s3.opt_step)) == (2, 2, 3, 1)
    for a, b in zip(jax.tree.leaves((s3.params, s3.opt_state)), jax.tree.leaves((s1.params, s1.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    s4, m4 = fn(s3, H.to_device(src.batch(3)))
    assert int(m4["skipped"]) == 0 and int(s4.nonfinite_run) == 0 and int(s4.nonfinite_total) == 2
    assert not np.array_equal(np.asarray(s4.params["lm_head"]["kernel"]), np.asarray(s3.params["lm_head"]["kernel"]))
