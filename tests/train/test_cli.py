"""`rsunivlm-train` called in-process: `main([...])` takes `--config.*` overrides like the command line,
repeated calls do not leak flags into each other, and the exit status is returned."""
import pytest

from rsunivlm_jax.train import cli
from rsunivlm_jax.train import trainer as trainer_lib


@pytest.fixture
def runs(monkeypatch):
    """Replaces the training run by a recorder of (config, workdir)."""
    seen = []

    def fake_train(config, workdir):
        seen.append((config, workdir))
        return trainer_lib.Summary("completed", int(config.train.steps), 1.0, None, 0, None, None)

    monkeypatch.setattr(trainer_lib, "train", fake_train)
    return seen


def test_main_applies_config_overrides(runs, tmp_path, capsys):
    argv = ["--config", "configs/tiny_cpu.py", "--workdir", str(tmp_path), "--config.train.steps=3",
            "--config.optim.lr=0.25", "--config.mesh.shape=(1,2,1)"]
    assert cli.main(argv) == 0
    config, workdir = runs[-1]
    assert workdir == str(tmp_path)
    assert config.train.steps == 3 and config.optim.lr == 0.25 and tuple(config.mesh.shape) == (1, 2, 1)
    assert config.name == "tiny-cpu-stage1" and config.train.global_batch == 8  # the rest: the file's
    assert "completed at step 3" in capsys.readouterr().out
    # A second call in the same process: its own overrides, none of the first call's.
    assert cli.main(["--config", "configs/tiny_cpu.py:stage2", "--workdir", str(tmp_path / "b"),
                     "--config.optim.lr=0.5"]) == 0
    config, workdir = runs[-1]
    assert workdir == str(tmp_path / "b") and config.name == "tiny-cpu-stage2"
    assert config.optim.lr == 0.5 and config.train.steps == 300 and tuple(config.mesh.shape) == (1, 1, 1)


def test_main_returns_the_exit_status(runs, monkeypatch, tmp_path):
    assert cli.main(["--config", "configs/tiny_cpu.py"]) == 2  # --workdir missing: usage error

    def diverge(config, workdir):
        raise trainer_lib.TrainingDiverged("boom")

    monkeypatch.setattr(trainer_lib, "train", diverge)
    assert cli.main(["--config", "configs/tiny_cpu.py", "--workdir", str(tmp_path)]) == 3
    assert not runs
