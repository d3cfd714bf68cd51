"""`rsunivlm-app` argument and checkpoint errors (one line, exit 2), and the examples it serves."""
import json

import pytest
from PIL import Image

from rsunivlm_jax import tasks
from rsunivlm_jax.app import cli
from rsunivlm_jax.app import examples as ex


def _one_line_error(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_without_checkpoint_names_the_command_that_makes_one(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _one_line_error(capsys, [])
    assert "runs/demo/gmoe does not exist" in err and "bash launch/quickstart.sh demo" in err


def test_bad_checkpoint_and_port(capsys, tmp_path):
    assert "does not exist" in _one_line_error(capsys, ["--checkpoint", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    assert "cannot load checkpoint" in _one_line_error(capsys, ["--checkpoint", str(tmp_path / "empty")])
    assert "not a port number" in _one_line_error(capsys, ["--checkpoint", str(tmp_path), "--port", "70000"])


def test_without_gradio_names_the_extra(capsys, tmp_path, monkeypatch):
    find_spec = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None if name == "gradio" else find_spec(name))
    assert "pip install 'rsunivlm_jax[app]'" in _one_line_error(capsys, ["--checkpoint", str(tmp_path)])


def test_examples_are_held_out_scenes_of_every_task(tmp_path):
    settings = ex.SyntheticSettings(seed=0, split="test", image_size=64, grid_size=8)
    examples = ex.write_examples(tmp_path / "ex", settings)
    assert [e.task for e in examples] == [t for _, t in ex.EXAMPLES]
    assert set(e.task for e in examples) == set(tasks.TASKS)
    from rsunivlm_jax.data import synthetic
    for (index, task), e in zip(ex.EXAMPLES, examples):
        record = next(r for r in synthetic.make_records(synthetic.scene_for(0, "test", index, 64), index, "test", 8)
                      if r["task"] == task)
        assert tasks.image_prefix(tasks.TASK_NUM_IMAGES[task]) + e.message == record["conversations"][0]["value"]
        assert tasks.task_of_prompt(e.message, 2 if e.image2 else 1) == task
        assert Image.open(e.image1).size == (64, 64) and (e.image2 is None) == (tasks.TASK_NUM_IMAGES[task] == 1)


def test_settings_follow_the_main_jobs_config(tmp_path):
    assert ex.settings_for(tmp_path / "gmoe") == ex.SyntheticSettings()
    (tmp_path / "demo_config.json").write_text(json.dumps(
        {"seed": 3, "data": {"eval_split": "test", "image_size": 48, "grid_size": 8}}))
    assert ex.settings_for(tmp_path / "gmoe") == ex.SyntheticSettings(seed=3, split="test", image_size=48, grid_size=8)
    (tmp_path / "demo_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="demo_config.json: cannot read"):
        ex.settings_for(tmp_path / "gmoe")


def test_latency_tool_refuses_a_missing_checkpoint(capsys, tmp_path):
    from rsunivlm_jax.app import latency
    assert latency.main(["--checkpoint", str(tmp_path / "missing")]) == 2
    assert "cannot load checkpoint" in capsys.readouterr().err


def test_port_in_use_is_one_line(capsys, app_checkpoint):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = _one_line_error(capsys, ["--checkpoint", str(app_checkpoint), "--port", str(port)])
    assert err.startswith("rsunivlm-app: error: ") and str(port) in err
