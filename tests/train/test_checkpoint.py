"""Checkpoints: restore onto a different mesh; exact resume after a real SIGKILL and after SIGTERM."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import rsunivlm_jax as rs
from rsunivlm_jax.train import checkpoint as ckpt_lib, metrics as metrics_lib, step as step_lib

from tests.train import helpers as H

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sharded_state(cfg, mesh, preset):
    graphdef, abstract = rs.abstract_init(cfg, mesh=mesh, rules=preset)
    opt = H.optimizer(abstract)
    sh = ckpt_lib.state_shardings_for(abstract, opt, mesh)
    return abstract, opt, sh


def test_restore_onto_a_different_mesh(tmp_path):
    cfg = H.tiny()
    mesh_a = rs.make_mesh((1, 8, 1))
    abstract_a, opt, sh_a = _sharded_state(cfg, mesh_a, "fsdp")
    _, params = rs.init(cfg, 0, mesh=mesh_a, rules="fsdp")
    state = step_lib.TrainState(
        step=jax.device_put(np.int32(5), sh_a.step), params=params,
        opt_state=jax.jit(opt.tx.init, out_shardings=sh_a.opt_state)(params),
        opt_step=jax.device_put(np.int32(4), sh_a.step), nonfinite_total=jax.device_put(np.int32(1), sh_a.step),
        nonfinite_run=jax.device_put(np.int32(0), sh_a.step))
    # Non-trivial moments: one optimiser update.
    grads = jax.tree.map(lambda p: p * 0.5 + 0.01, params)
    _, new_opt = jax.jit(opt.tx.update)(grads, state.opt_state, params)
    state = state.replace(opt_state=new_opt)
    it = iter(H.batches(cfg))
    next(it), next(it)
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "ck"), keep=2, every=1)
    ckpt.save(5, state, data_iter=it, meta={"note": "mesh a"})
    ckpt.wait()

    mesh_b = rs.make_mesh((2, 2, 2))
    abstract_b, opt_b, sh_b = _sharded_state(cfg, mesh_b, "fsdp_tensor")
    target = ckpt_lib.abstract_state(abstract_b, opt_b, sh_b)
    it_b = iter(H.batches(cfg))
    restored, meta = ckpt.restore(5, target, data_iter=it_b)
    ckpt.close()
    assert meta["note"] == "mesh a" and meta["step"] == 5
    assert it_b.get_state() == {"index": 2}
    for (path, a), b, s in zip(jax.tree_util.tree_flatten_with_path(restored)[0], jax.tree.leaves(state),
                               jax.tree.leaves(sh_b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding.is_equivalent_to(s, a.ndim), path
    kernel = restored.params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, "fsdp", "tensor")
    assert kernel.sharding.mesh.shape == mesh_b.shape


def _child(workdir, data, steps, pause_after=-1, marker="", release=""):
    cmd = [sys.executable, "-m", "tests.train.run_child", "--workdir", str(workdir), "--data", str(data),
           "--steps", str(steps), "--pause_after", str(pause_after), "--marker", str(marker),
           "--release", str(release)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(cond, proc, what, timeout=300):
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"child exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timeout waiting for {what}")
        time.sleep(0.1)


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _committed(workdir, step):
    return os.path.isdir(os.path.join(workdir, "checkpoints", str(step)))


@pytest.mark.slow
def test_exact_resume_after_sigkill_and_sigterm(tmp_path):
    from rsunivlm_jax.data import synthetic
    data = tmp_path / "data"
    tasks = ("cap", "vqa", "cls", "vg", "ref")
    synthetic.write_dataset(str(data), 16, image_size=64, seed=0, split="train", grid_size=8, tasks=tasks,
                            progress=False)
    synthetic.write_dataset(str(data), 4, image_size=64, seed=0, split="val", grid_size=8, tasks=tasks,
                            progress=False)
    steps = 8
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    p_straight = _child(straight, data, steps)  # runs alongside the interrupted one

    # 1) Kill -9 while the run is blocked fetching batch 5 (checkpoint 3 committed).
    marker, release = tmp_path / "m1", tmp_path / "r1"
    p = _child(resumed, data, steps, pause_after=4, marker=marker, release=release)
    _wait_for(lambda: marker.exists() and _committed(resumed, 3), p, "pause after step 4")
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    assert ckpt_lib.Checkpointer(str(resumed / "checkpoints"), read_only=True).latest_step() == 3

    # 2) Resume from 3; SIGTERM while blocked before step 7: it runs step 7, saves, exits cleanly.
    marker, release = tmp_path / "m2", tmp_path / "r2"
    p = _child(resumed, data, steps, pause_after=3, marker=marker, release=release)
    _wait_for(marker.exists, p, "pause after step 6")
    p.send_signal(signal.SIGTERM)
    release.touch()
    out = _finish(p)
    assert "STATUS preempted 7" in out
    assert _committed(resumed, 7)

    # 3) Resume from 7 to the end.
    out = _finish(_child(resumed, data, steps))
    assert f"STATUS completed {steps}" in out
    _finish(p_straight)

    # Identical losses (train and eval) and parameters + optimiser state, bit for bit.
    a = metrics_lib.read_jsonl(str(straight / "metrics.jsonl"))
    b = metrics_lib.read_jsonl(str(resumed / "metrics.jsonl"))
    assert [r["step"] for r in a] == list(range(1, steps + 1)) == [r["step"] for r in b]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    ea = metrics_lib.read_jsonl(str(straight / "metrics.jsonl"), split="eval")
    eb = metrics_lib.read_jsonl(str(resumed / "metrics.jsonl"), split="eval")
    assert [r["loss"] for r in ea] == [r["loss"] for r in eb] and len(ea) == 2
    trees = []
    for wd in (straight, resumed):
        ck = ckpt_lib.Checkpointer(str(wd / "checkpoints"), read_only=True)
        assert ck.latest_step() == steps
        restored = ck.manager.restore(steps, args=ocp.args.Composite(params=ocp.args.StandardRestore(),
                                                                     opt_state=ocp.args.StandardRestore()))
        trees.append((restored["params"], restored["opt_state"]))
        ck.close()
    flat_a, flat_b = H.flat(trees[0]), H.flat(trees[1])
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=k)
