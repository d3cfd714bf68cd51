"""Benchmark results record no machine paths (bench.common.save_result scrubs them)."""
import json
import os
import sys
import tempfile

from bench import common


def test_saved_results_hold_no_machine_paths(tmp_path, capsys):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tmp = os.path.join(tempfile.gettempdir(), "bench_x1y2")
    result = {"cmd": f"{sys.executable} -m bench.x --src {tmp}/src --out {repo}/bench/results/x.json",
              "nested": [{"dir": repo}, 3, None], "home": os.path.expanduser("~/data")}
    path = tmp_path / "r.json"
    common.save_result(result, str(path))
    saved = json.loads(path.read_text())
    assert saved["cmd"] == "python -m bench.x --src <tmp>/src --out ./bench/results/x.json"
    assert saved["nested"] == [{"dir": "."}, 3, None] and saved["home"] == "~/data"
    assert repo not in capsys.readouterr().out


def test_results_the_runner_writes_itself_hold_no_machine_paths(tmp_path):
    """`python -m bench` writes the data-pipeline and conversion results itself (from the child's
    output); those go through the same scrubbing."""
    from bench.__main__ import _write

    tmp = os.path.join(tempfile.gettempdir(), "rsu_convert_ab12")
    _write(tmp_path / "c.json", {"convert_bfloat16": {"cmd": f"{sys.executable} -m rsunivlm_jax.convert --src {tmp}/src"}})
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved == {"convert_bfloat16": {"cmd": "python -m rsunivlm_jax.convert --src <tmp>/src"}}
