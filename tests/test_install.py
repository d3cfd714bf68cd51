"""`pip install .` without extras gives working command-line tools.

A wheel is built from the checkout and installed into a fresh virtual environment (no extras, no
access to this environment's packages; `--no-compile` only skips writing .pyc files). In it:
every CLI answers `--help` with status 0; the documented tiny recipe trains for one step, the run
predicts and evaluates a caption task (Java-free metrics without pycocoevalcap); a tiny
safetensors checkpoint converts to our format and back without torch, and a PyTorch pickle
checkpoint is refused with one line saying torch is needed. Takes about 3 minutes (the install
is about 80 s with a warm pip cache).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLIS = ("rsunivlm-demo", "rsunivlm-train", "rsunivlm-predict", "rsunivlm-eval", "rsunivlm-data",
        "rsunivlm-convert")


def _run(cmd, *, cwd, env, timeout=600, check=True):
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, f"{cmd}: exit {out.returncode}\n{(out.stdout + out.stderr)[-4000:]}"
    return out


def _source_copy(dst: Path) -> Path:
    """The checkout's files (tracked and untracked-but-not-ignored), without .venv / build outputs."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = REPO / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """(venv bin dir, source copy, environment for commands) of a fresh no-extras install."""
    tmp = tmp_path_factory.mktemp("install")
    src = _source_copy(tmp / "src")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(XLA_FLAGS="", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", HF_HUB_OFFLINE="1")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "wheel", src],
         cwd=tmp, env=env)
    wheel = next((tmp / "wheel").glob("rsunivlm_jax-*.whl"))
    _run([sys.executable, "-m", "venv", tmp / "venv"], cwd=tmp, env=env)
    bin_dir = tmp / "venv" / "bin"
    _run([bin_dir / "python", "-m", "pip", "install", "-q", "--no-compile", wheel], cwd=tmp, env=env, timeout=900)
    work = tmp / "work"  # outside the checkout: imports come from the installed wheel
    work.mkdir()
    return bin_dir, src, env, work


@pytest.mark.slow
def test_plain_install_cli_help_train_predict_eval(plain):
    bin_dir, src, env, work = plain
    probe = _run([bin_dir / "python", "-c", "import importlib.util as u, rsunivlm_jax; print(rsunivlm_jax.__file__); "
                  "print([m for m in ('torch', 'pycocoevalcap', 'pytest') if u.find_spec(m)])"], cwd=work, env=env)
    where, extras = probe.stdout.strip().splitlines()
    assert str(bin_dir.parent) in where and extras == "[]", probe.stdout
    for cli in CLIS:
        out = _run([bin_dir / cli, "--help"], cwd=work, env=env)
        assert "usage" in out.stdout.lower(), (cli, out.stdout[:400])

    run = work / "run"
    _run([bin_dir / "rsunivlm-train", "--config", src / "configs" / "tiny_cpu.py", "--workdir", run,
          "--config.train.steps=1", "--config.train.global_batch=2", "--config.data.synthetic.num=8",
          "--config.data.synthetic.eval_num=4", "--config.ckpt.every=1", "--config.eval.every=0",
          "--config.train.progress=False", "--config.data.num_workers=0"], cwd=work, env=env)
    data = run / "data" / "synthetic"
    recs = [json.loads(line) for line in open(data / "val.jsonl")]
    cap = next(r for r in recs if r.get("task") == "cap")
    out = _run([bin_dir / "rsunivlm-predict", "--checkpoint", run, "--image", data / cap["image"], "--prompt",
                "[CAP] Describe the image.", "--max-new-tokens", "3", "--out", work / "p.png", "--json"],
               cwd=work, env=env)
    assert json.loads(out.stdout.strip().splitlines()[-1])["task"] == "cap" and (work / "p.png").is_file()
    out = _run([bin_dir / "rsunivlm-eval", "--checkpoint", run, "--task", "cap", "--data", data, "--split", "val",
                "--limit", "1", "--out", work / "eval", "--batch-size", "1", "--max-new-tokens", "3",
                "--devices", "1", "--no-progress", "--examples", "0"], cwd=work, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["task"] == "cap" and result["metrics"]["Bleu_1"] is not None and result["metrics"]["METEOR"] is None


@pytest.mark.slow
def test_plain_install_converts_safetensors_without_torch(plain, tmp_path):
    from tests import hf_utils as H

    bin_dir, _, env, work = plain
    model, text, vision = H.llava_ov(7, tie=True)
    hf = H.write_checkpoint(tmp_path / "hf", H.llava_next_tensors([model], experts=False),
                            H.llava_next_config(text, vision, num_experts=None, stored_blocks=2))
    _run([bin_dir / "rsunivlm-convert", "--src", hf, "--dst", tmp_path / "ours", "--quiet"], cwd=work, env=env)
    assert (tmp_path / "ours" / "meta.json").is_file()
    _run([bin_dir / "rsunivlm-convert", "--to-torch", "--src", tmp_path / "ours", "--dst", tmp_path / "back",
          "--quiet"], cwd=work, env=env)
    assert list((tmp_path / "back").glob("*.safetensors"))
    pickle_dir = tmp_path / "pickled"
    pickle_dir.mkdir()
    shutil.copy(hf / "config.json", pickle_dir / "config.json")
    (pickle_dir / "pytorch_model.bin").write_bytes(b"not read without torch")
    out = _run([bin_dir / "rsunivlm-convert", "--src", pickle_dir, "--dst", tmp_path / "x", "--quiet"], cwd=work,
               env=env, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "torch" in out.stderr and "pip install" in out.stderr, out.stderr
    assert not (tmp_path / "x").exists()
