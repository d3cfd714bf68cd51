"""Bad input on every command line: exit status 2, one line on stderr naming the bad thing, no traceback.

Each row calls a CLI's `main(argv)` in-process with one bad input. Prompt / image problems are given
with a checkpoint path that does not exist: the prompt's message (not the checkpoint's) shows that
prompts are checked before any model is loaded. Training rows never reach the trainer.
"""
from __future__ import annotations

import importlib
import json
import sys
import traceback

import numpy as np
import pytest
from PIL import Image

import rsunivlm_jax as rs

CLIS = {
    "predict": "rsunivlm_jax.inference.predict_cli",
    "eval": "rsunivlm_jax.eval.cli",
    "train": "rsunivlm_jax.train.cli",
    "data": "rsunivlm_jax.data.cli",
    "convert": "rsunivlm_jax.convert.__main__",
    "demo": "rsunivlm_jax.demo",
}


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """Bad (and a few good) inputs on disk; returns the folder."""
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / name)
    (root / "notimage.png").write_text("this is text, not a PNG")
    meta = {"format": "rsunivlm_jax.converted/1", "model_config": rs.presets.get("tiny").to_dict(),
            "parts": ["vision", "connector", "decoder", "lm_head"]}
    for name, text in (
            ("corrupt", "{not json"),
            ("format", json.dumps({**meta, "format": "someone-else/3"})),
            ("field", json.dumps({**meta, "model_config": {**meta["model_config"], "bogus_field": 1}})),
            ("parts", json.dumps({**meta, "parts": ["decoder", "wings"]}))):
        (root / name).mkdir()
        (root / name / "meta.json").write_text(text)
    (root / "empty").mkdir()
    (root / "images").mkdir()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / "x.png")
    cls = {"id": "c0", "task": "cls", "image": "images/x.png", "conversations": [
        {"from": "human", "value": "<image>\n[CLS] Classify the given image in one of the following classes: "
                                   "forest, river."}, {"from": "gpt", "value": "forest"}]}
    (root / "cls.jsonl").write_text(json.dumps(cls) + "\n")
    (root / "broken.jsonl").write_text(json.dumps(cls) + "\n{not json\n")
    return root


def _predict(d, *extra, images=("a.png",), prompt="[CAP] Describe this image briefly.", ckpt="nope"):
    argv = ["--checkpoint", str(d / ckpt), "--prompt", prompt, "--out", str(d / "out.png")]
    for name in images:
        argv += ["--image", str(d / name)]
    return argv + list(extra)


def _eval(d, *extra, data="cls.jsonl", ckpt="nope", task="cls"):
    return ["--checkpoint", str(d / ckpt), "--task", task, "--data", str(d / data), "--out", str(d / "ev"),
            "--no-progress", *extra]


def _train(*extra, config="configs/tiny_cpu.py", workdir="WORKDIR"):
    return ["--config", config, *(["--workdir", workdir] if workdir else []), *extra]


# (cli, argv as a function of the fixture folder, substrings the one line must contain)
ROWS = [
    # rsunivlm-predict
    ("predict", lambda d: _predict(d), ["nope", "does not exist"]),
    ("predict", lambda d: _predict(d, ckpt="corrupt"), ["corrupt/meta.json", "not valid JSON"]),
    ("predict", lambda d: _predict(d, ckpt="format"), ["format/meta.json", "someone-else/3"]),
    ("predict", lambda d: _predict(d, ckpt="field"), ["field/meta.json", "bogus_field"]),
    ("predict", lambda d: _predict(d, ckpt="parts"), ["parts/meta.json", "wings"]),
    ("predict", lambda d: _predict(d, ckpt="empty"), ["empty", "not a checkpoint"]),
    ("predict", lambda d: _predict(d, "--constrained", "--label", "a*b", prompt="[SEG] water."),
     ["--label", "a*b"]),
    ("predict", lambda d: _predict(d, "--constrained", prompt="[SEG] others."), ["others"]),
    ("predict", lambda d: _predict(d, prompt="[CCD] Please briefly describe the changes in these two images."),
     ["[CCD]", "2 images", "got 1"]),
    ("predict", lambda d: _predict(d, images=("a.png", "b.png"), prompt="[VG] the red car"),
     ["[VG]", "1 image", "got 2"]),
    ("predict", lambda d: _predict(d, prompt="<image> <image>\n[CAP] Describe."), ["<image>", "2", "1 image"]),
    ("predict", lambda d: _predict(d, "--max-new-tokens", "0"), ["--max-new-tokens", "0"]),
    ("predict", lambda d: _predict(d, images=("missing.png",)), ["missing.png"]),
    ("predict", lambda d: _predict(d, images=("notimage.png",)), ["notimage.png"]),
    ("predict", lambda d: _predict(d, images=("a.png", "b.png", "a.png")), ["--image", "at most 2"]),
    ("predict", lambda d: _predict(d, "--top-p", "1.5"), ["--top-p", "1.5"]),
    ("predict", lambda d: _predict(d, "--grid-size", "0"), ["--grid-size", "0"]),
    # rsunivlm-eval
    ("eval", lambda d: _eval(d, data="missing.jsonl"), ["missing.jsonl", "does not exist"]),
    ("eval", lambda d: _eval(d), ["nope", "does not exist"]),
    ("eval", lambda d: _eval(d, ckpt="corrupt"), ["corrupt/meta.json", "not valid JSON"]),
    ("eval", lambda d: _eval(d, task="vg"), ["no records of task 'vg'", "cls.jsonl"]),
    ("eval", lambda d: _eval(d, task="bogus"), ["--task", "bogus"]),
    ("eval", lambda d: _eval(d, "--max-new-tokens", "0"), ["--max-new-tokens", "0"]),
    ("eval", lambda d: _eval(d, "--limit", "0"), ["--limit", "0"]),
    ("eval", lambda d: _eval(d, "--batch-size", "-1"), ["--batch-size", "-1"]),
    ("eval", lambda d: _eval(d, "--split", "nosuch", data=""), ["no split 'nosuch'"]),
    ("eval", lambda d: _eval(d, "--max-text-len", "0"), ["--max-text-len", "0"]),
    # rsunivlm-train
    ("train", lambda d: _train("--config.model.preset=bogus-preset"), ["model.preset", "bogus-preset"]),
    ("train", lambda d: _train("--config.optim.lr=abc"), ["optim.lr", "abc"]),
    ("train", lambda d: _train("--config.optim.bogus_key=1"), ["optim.bogus_key"]),
    ("train", lambda d: _train("--config.model.overrides={'bogus_field': 1}"), ["model", "bogus_field"]),
    ("train", lambda d: _train(config="configs/no_such_config.py"), ["configs/no_such_config.py"]),
    ("train", lambda d: _train(config="configs/tiny_cpu.py:stage9"), ["stage9"]),
    ("train", lambda d: _train(workdir=None), ["--workdir"]),
    ("train", lambda d: _train("--no-such-flag"), ["--no-such-flag"]),
    # rsunivlm-data
    ("data", lambda d: ["inspect", str(d / "missing.jsonl")], ["missing.jsonl", "does not exist"]),
    ("data", lambda d: ["inspect", str(d / "broken.jsonl"), "--strict"], ["broken.jsonl:2", "bad_json"]),
    ("data", lambda d: ["synth", "--out", str(d / "syn"), "--num", "0"], ["--num", "0"]),
    ("data", lambda d: ["convert", "--format", "bogus_format", "--src", str(d), "--out", str(d / "conv")],
     ["bogus_format"]),
    ("data", lambda d: ["convert", "--format", "aid", "--src", str(d), "--out", str(d / "conv"), "--options",
                        "{bad"], ["--options", "JSON"]),
    ("data", lambda d: ["frobnicate"], ["frobnicate"]),
    # rsunivlm-convert
    ("convert", lambda d: ["--to-torch", "--src", str(d / "empty"), "--dst", str(d / "t1")],
     ["empty", "not a checkpoint"]),
    ("convert", lambda d: ["--to-torch", "--src", str(d / "corrupt"), "--dst", str(d / "t2")],
     ["corrupt/meta.json", "not valid JSON"]),
    ("convert", lambda d: ["--src", str(d / "empty"), "--dst", str(d / "t3")], ["empty", "config.json"]),
    ("convert", lambda d: ["--src", str(d / "empty"), "--dst", str(d / "t4"), "--shard-size-gb", "0"],
     ["--shard-size-gb", "0"]),
    # rsunivlm-demo
    ("demo", lambda d: ["--workdir", str(d / "demo"), "--set", "train.no_such_field=1"], ["train.no_such_field"]),
    ("demo", lambda d: ["--workdir", str(d / "demo"), "--set", "train.stage1_steps=abc"],
     ["train.stage1_steps", "abc"]),
    ("demo", lambda d: ["--workdir", str(d / "demo"), "--set", "no_equals_sign"], ["no_equals_sign"]),
]


def _run(cli: str, argv: list[str], capsys) -> tuple[object, str, str]:
    """(exit status, stdout, stderr) of `main(argv)`; an exception escaping `main` lands in stderr."""
    main = importlib.import_module(CLIS[cli]).main
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    except Exception:  # noqa: BLE001 - the row shows it
        rc = "raised"
        sys.stderr.write(traceback.format_exc())
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def no_training(monkeypatch):
    """The trainer must not be reached by a bad training command."""
    from rsunivlm_jax.train import trainer

    def refuse(*_a, **_k):
        raise AssertionError("the trainer was started")

    monkeypatch.setattr(trainer, "train", refuse)


@pytest.mark.parametrize("cli,argv,expected", ROWS, ids=[f"{r[0]}-{i}" for i, r in enumerate(ROWS)])
def test_bad_input_is_one_named_line(cli, argv, expected, d, tmp_path, capsys, no_training):
    args = [a.replace("WORKDIR", str(tmp_path / "run")) for a in argv(d)]
    rc, _, err = _run(cli, args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], (text, lines[0])


def test_debug_flag_shows_the_traceback(d, capsys):
    rc, _, err = _run("predict", _predict(d, "--debug"), capsys)
    assert rc == 2 and "Traceback" in err and "does not exist" in err


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_help_exits_0(cli, capsys):
    rc, out, err = _run(cli, ["--help"], capsys)
    assert rc == 0, err
    assert "usage:" in out and "--debug" in out


def test_inspect_of_a_file_renders_next_to_it(d, capsys):
    from rsunivlm_jax.data import cli
    src = d / "cls.jsonl"
    assert cli.main(["inspect", str(src), "--samples", "1", "--image-size", "32"]) == 0
    rendered = list((d / "cls_inspect").glob("*.png"))
    assert len(rendered) == 1 and src.is_file()
    assert "rendered 1 sample(s)" in capsys.readouterr().out
