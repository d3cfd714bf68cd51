"""Multi-process: 2 local processes x 4 CPU devices (jax.distributed on localhost) train 3 steps
with the same losses as 1 process x 8 devices."""
import os
import socket
import subprocess
import sys

import pytest

from rsunivlm_jax.train import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(*args):
    cmd = [sys.executable, "-m", "tests.train.run_mp_child", *map(str, args)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    port = _free_port()
    one = _start("--workdir", tmp_path / "one", "--devices", 8)
    two = [_start("--workdir", tmp_path / "two", "--devices", 4, "--nproc", 2, "--pid", i, "--port", port)
           for i in range(2)]
    outs = []
    for p in [one] + two:
        out, _ = p.communicate(timeout=600)
        outs.append(out)
        assert p.returncode == 0, out[-4000:]
    assert all("STATUS completed 3" in o for o in outs)
    a = metrics_lib.read_jsonl(str(tmp_path / "one" / "metrics.jsonl"))
    b = metrics_lib.read_jsonl(str(tmp_path / "two" / "metrics.jsonl"))
    assert [r["step"] for r in a] == [1, 2, 3] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-6, abs=1e-6)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-5)
    assert os.path.isdir(tmp_path / "two" / "checkpoints" / "3")
