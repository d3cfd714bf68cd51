"""Trainer loop: NaN injection is skipped and counted, divergence stops with the last good
checkpoint, metrics files (JSONL, TensorBoard, MFU), FLOP formula."""
import glob

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import rsunivlm_jax as rs
from tests.config_files import load as load_config
from rsunivlm_jax.train import checkpoint as ckpt_lib, data as data_lib, metrics as metrics_lib
from rsunivlm_jax.train import trainer as trainer_lib


def _config(steps):
    c = load_config("tiny_cpu.py:stage2")
    c.init.mode = "random"
    c.train.steps = steps
    c.train.global_batch = 4
    c.train.log_every = 1
    c.train.progress = False
    c.data.max_text_len = 24
    c.data.max_images = 1
    c.ckpt.every = 2
    c.eval.every = 0
    c.metrics.peak_flops_per_device = 1e12
    return c


def _inputs(config, nan_at=()):
    model = trainer_lib.model_config_from(config.model)
    src = data_lib.RandomBatches(model, global_batch=4, text_len=24, num_images=1, nan_at=nan_at)
    return data_lib.Inputs(src, None, None, 4)


def test_nan_batch_is_skipped_counted_and_the_run_continues(tmp_path):
    config = _config(steps=5)
    summary = trainer_lib.train(config, str(tmp_path), inputs=_inputs(config, nan_at=(1,)))  # step 2 is NaN
    assert summary.status == "completed" and summary.step == 5 and summary.nonfinite_total == 1
    rows = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[1]["loss"] is None and rows[1]["nonfinite_total"] == 1  # non-finite loss logged as null
    assert all(np.isfinite(r["loss"]) for r in rows[2:]) and rows[-1]["nonfinite_total"] == 1
    for key in ("learning_rate", "grad_norm", "step_time", "tokens_per_s", "mfu", "model_tflops_per_step"):
        assert rows[-1][key] is not None and rows[-1][key] > 0, key
    assert any(k.startswith("loss_g") for k in rows[-1])
    assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    ck = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
    assert ck.all_steps()[-1] == 5
    meta = ck.read_meta(5)
    ck.close()
    assert meta["model_config"]["gmoe"]["num_experts"] == 3
    assert meta["mesh"]["shape"] == {"data": 1, "fsdp": 1, "tensor": 1}
    assert meta["experiment"]["optim"]["lr"] == config.optim.lr and "rsunivlm_jax" in meta["code_version"]


def test_too_many_nonfinite_steps_stop_with_the_last_good_checkpoint(tmp_path):
    config = _config(steps=10)
    config.model.dtype = "bfloat16"  # mixed precision: bf16 compute, float32 master parameters
    config.train.max_consecutive_nonfinite = 2
    with pytest.raises(trainer_lib.TrainingDiverged, match="2 non-finite steps in a row"):
        trainer_lib.train(config, str(tmp_path), inputs=_inputs(config, nan_at=range(3, 100)))
    rows = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert np.isfinite(rows[0]["loss"]) and np.isfinite(rows[2]["loss"]) and rows[3]["loss"] is None
    ck = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
    assert ck.latest_step() == 2  # step 4 was skipped (no save inside the streak), the run stopped at 5
    restored = ck.manager.restore(2, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
    ck.close()
    assert {str(x.dtype) for x in jax.tree.leaves(restored["params"])} == {"float32"}


def test_flop_formula_matches_hand_count_for_rsunivlm_1b():
    cfg = rs.presets.get("rsunivlm-1b")
    p = metrics_lib.matmul_params(cfg)
    # Per position: 44.1 M attention + 313.8 M one expert per position; lm_head 136.1 M.
    assert p["decoder"] == 24 * (896 * 896 * 2 + 2 * 896 * 128 + 3 * 896 * 4864)
    assert round(p["decoder"] / 1e6, 1) == 357.8 and round(p["lm_head"] / 1e6, 1) == 136.1
    assert 0.39e9 < p["vision"] < 0.41e9  # ~0.4 B (SigLIP so400m, 26 blocks)
    t, n = 294, 1
    positions = t + n * 729  # 1,024 decoder positions
    want_decoder = 6 * p["decoder"] * positions + 6 * 24 * 896 * positions * positions  # causal attention: half
    want_head = 6 * p["lm_head"] * t
    want_vision = 6 * p["vision"] * 729 + 3 * 26 * 4 * 729 * 1152 * 729
    got = metrics_lib.flops_per_example(cfg, t, n)
    assert got["decoder"] == pytest.approx(want_decoder)
    assert got["lm_head"] == pytest.approx(want_head)
    assert got["vision"] == pytest.approx(want_vision)
    assert got["vision"] / 729 / 6 == pytest.approx(p["vision"] + 26 * 2 * 729 * 1152, rel=1e-9)
    # Frozen vision tower: forward only; frozen connector below a trained decoder: forward only;
    # frozen decoder above a trained connector: forward + input gradients.
    frozen = metrics_lib.flops_per_example(cfg, t, n, {"vision": False, "connector": True, "decoder": False})
    assert frozen["vision"] == pytest.approx(got["vision"] / 3)
    assert frozen["decoder"] == pytest.approx(got["decoder"] * 2 / 3)
    assert metrics_lib.mfu(2e12, 2.0, 1e12, 1) == pytest.approx(1.0)
    assert metrics_lib.peak_flops_per_device("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert metrics_lib.peak_flops_per_device("cpu") is None


def _leaky_compile_steps(monkeypatch):
    """Makes the step call take the batch as host arrays: an implicit host-to-device transfer."""
    compile_steps = trainer_lib.Trainer.compile_steps

    def leaky(self):
        train_fn, eval_fn = compile_steps(self)
        return (lambda state, batch: train_fn(state, {k: np.asarray(v) for k, v in batch.items()})), eval_fn
    monkeypatch.setattr(trainer_lib.Trainer, "compile_steps", leaky)


def test_implicit_transfer_in_the_step_call_is_disallowed(tmp_path, monkeypatch):
    _leaky_compile_steps(monkeypatch)
    config = _config(steps=1)
    assert config.train.transfer_guard == "disallow"  # the default
    with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
        trainer_lib.train(config, str(tmp_path / "guarded"), inputs=_inputs(config))
    config.train.transfer_guard = "allow"
    assert trainer_lib.train(config, str(tmp_path / "allowed"), inputs=_inputs(config)).step == 1
