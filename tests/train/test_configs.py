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
                 "--config.optim.trainable=('decoder/.*','lm_head/.*')", "--config.init.path=runs/s1",
                 "--config.model.overrides={'decoder': {'rms_norm_eps': 1e-5}}"])
    assert cfg.optim.lr == 2e-5 and cfg.optim.vision_lr == 1e-6 and tuple(cfg.mesh.shape) == (2, -1, 1)
    assert tuple(cfg.optim.trainable) == ("decoder/.*", "lm_head/.*") and cfg.init.path == "runs/s1"
    assert trainer_lib.model_config_from(cfg.model).decoder.rms_norm_eps == 1e-5
    with pytest.raises((flags.Error, AttributeError, KeyError), match="no_such_field"):
        _load([f"--config={REPO}/configs/tiny_cpu.py", "--config.optim.no_such_field=1"])


def test_tiny_config_rejects_unknown_stage():
    from tests.config_files import load as load_config
    with pytest.raises(ValueError, match="stage1"):
        load_config("tiny_cpu.py:stage3")


def test_config_files_load_by_path_and_the_library_never_imports_configs(tmp_path):
    """configs/ is not a package: each file loads by path from any working directory, and neither
    the library nor its main job imports a module named `configs`."""
    import subprocess
    import sys
    paths = [os.path.join(REPO, "configs", n) for n in sorted(os.listdir(os.path.join(REPO, "configs")))
             if n.endswith(".py")]
    code = ("import sys; from rsunivlm_jax.train.config_lib import load_config_file as load; "
            "cfgs = [load(p) for p in sys.argv[1:]]; import rsunivlm_jax.demo, rsunivlm_jax.train.cli; "
            "assert 'configs' not in sys.modules, 'configs imported'; print(len(cfgs))")
    out = subprocess.run([sys.executable, "-c", code, *paths], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == str(len(paths)), out.stderr[-2000:]
    assert not os.path.exists(os.path.join(REPO, "configs", "__init__.py"))
    from rsunivlm_jax.train import config_lib
    from tests.config_files import load as load_config
    assert load_config("demo.py:quick").to_dict() == config_lib.demo_config("quick").to_dict()
