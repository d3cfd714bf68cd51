"""End to end through the command line: the tiny config on the synthetic dataset halves its loss
within 200 steps; `--config.*` overrides reach the run; re-running the command resumes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rsunivlm_jax.train import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(workdir, *overrides):
    cmd = [sys.executable, "-m", "rsunivlm_jax.train.cli", "--config", "configs/tiny_cpu.py", "--workdir",
           str(workdir), "--config.train.steps=200", "--config.data.synthetic.num=120",
           "--config.data.synthetic.eval_num=12", "--config.ckpt.every=100", "--config.eval.every=100",
           "--config.train.progress=False", *overrides]
    env = dict(os.environ, XLA_FLAGS="")  # one CPU device, as a user would run it
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout


@pytest.mark.slow
def test_tiny_config_halves_its_loss_in_200_steps(tmp_path):
    out = _cli(tmp_path, "--config.optim.lr=0.003", "--config.optim.warmup_steps=10")
    assert "completed at step 200" in out
    resolved = json.load(open(tmp_path / "config.json"))
    assert resolved["experiment"]["optim"]["lr"] == 0.003
    rows = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(10, 201, 10))
    first, last = rows[0]["loss"], np.mean([r["loss"] for r in rows[-2:]])
    assert last <= 0.5 * first, (first, last)
    evals = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"), split="eval")
    assert [r["step"] for r in evals] == [100, 200] and evals[-1]["loss"] <= 0.5 * first
    assert os.path.exists(tmp_path / "vocab.json")
    # Re-running the same command resumes from the final checkpoint and has nothing left to do.
    again = _cli(tmp_path, "--config.optim.lr=0.003", "--config.optim.warmup_steps=10")
    assert "completed at step 200" in again
    assert len(metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))) == 20
