"""Experiment configs: every file loads, resolves to the intended model, and accepts command-line
overrides through absl + ml_collections config_flags."""
import os

import pytest
from absl import flags
from ml_collections import config_flags

from rsunivlm_jax.train import optim, trainer as trainer_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(argv):
    fv = flags.FlagValues()
    argv = ["prog", *argv]  # overrides are declared from the argv seen at definition time
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return fv.config


@pytest.mark.parametrize("name,experts,tied", [
    ("configs/rsunivlm_1b_stage1.py", 1, True),
    ("configs/rsunivlm_1b_stage2.py", 3, False),
    ("configs/tiny_cpu.py", 1, False),
    ("configs/tiny_cpu.py:stage2", 3, False),
])
def test_config_files_resolve_to_their_models(name, experts, tied):
    cfg = _load([f"--config={os.path.join(REPO, name)}"])
    model = trainer_lib.model_config_from(cfg.model)
    assert model.gmoe.num_experts == experts and model.decoder.tie_word_embeddings is tied
    spec = optim.OptimSpec.from_config(cfg.optim, cfg.train.steps)
    assert spec.total_steps == cfg.train.steps and spec.lr > 0


def test_command_line_overrides_any_field():
    cfg = _load([f"--config={REPO}/configs/rsunivlm_1b_stage2.py", "--config.optim.lr=2e-5",
                 "--config.optim.vision_lr=1e-6", "--config.mesh.shape=(2,-1,1)",
                 "--config.optim.trainable=('decoder/.*','lm_head/.*')", "--config.init.path=/tmp/s1",
                 "--config.model.overrides_json={\"decoder\": {\"rms_norm_eps\": 1e-5}}"])
    assert cfg.optim.lr == 2e-5 and cfg.optim.vision_lr == 1e-6 and tuple(cfg.mesh.shape) == (2, -1, 1)
    assert tuple(cfg.optim.trainable) == ("decoder/.*", "lm_head/.*") and cfg.init.path == "/tmp/s1"
    assert trainer_lib.model_config_from(cfg.model).decoder.rms_norm_eps == 1e-5
    with pytest.raises((flags.Error, AttributeError, KeyError), match="no_such_field"):
        _load([f"--config={REPO}/configs/tiny_cpu.py", "--config.optim.no_such_field=1"])


def test_tiny_config_rejects_unknown_stage():
    from configs import tiny_cpu
    with pytest.raises(ValueError, match="stage1"):
        tiny_cpu.get_config("stage3")
