"""Atomic writes (temporary name + rename) and the torn-line tolerant JSONL reader, and the writers
that use them: an interrupted write leaves the previous file whole."""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from bench import common as bench_common
from rsunivlm_jax import fileio
from rsunivlm_jax.data import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _no_temp_files(d):
    return [n for n in os.listdir(d) if n.endswith(".tmp")] == []


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "x.json"
    fileio.atomic_write_json(p, {"v": 1})
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        fileio.atomic_write_json(p, {"v": 2})
    assert json.loads(p.read_text()) == {"v": 1} and _no_temp_files(tmp_path)


def test_atomic_write_killed_mid_write_leaves_old_or_new(tmp_path):
    """A child rewrites a 16 MB file in a loop and is SIGKILLed: the file is always whole."""
    p = tmp_path / "big.bin"
    n = 16 << 20
    code = ("import sys; from rsunivlm_jax import fileio\n"
            f"p, n = sys.argv[1], {n}\n"
            "fileio.atomic_write_bytes(p, b'A' * n); print('ready', flush=True)\n"
            "i = 0\n"
            "while True:\n"
            "    i += 1; fileio.atomic_write_bytes(p, (b'B' if i % 2 else b'A') * n)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(p)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.7)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    data = p.read_bytes()
    assert len(data) == n and data in (b"A" * n, b"B" * n)


def test_tolerant_jsonl_reader(tmp_path, caplog):
    p = tmp_path / "m.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b')
    with caplog.at_level(logging.WARNING):
        rows, dropped = fileio.read_jsonl_tolerant(p)
    assert rows == [{"a": 1}, {"a": 2}] and dropped == 1 and "torn last line 3" in caplog.text
    p.write_text('{"a": 1}\n{"a": 2}')  # the last line is complete JSON without its newline: kept
    assert fileio.read_jsonl_tolerant(p) == ([{"a": 1}, {"a": 2}], 0)
    p.write_text('{"a": 1}\n{"a"\n{"a": 3}\n')  # corruption before the end is an error, named
    with pytest.raises(ValueError, match="m.jsonl: line 2"):
        fileio.read_jsonl_tolerant(p)


def test_records_write_jsonl_interrupted_keeps_the_old_file(tmp_path):
    p = tmp_path / "train.jsonl"
    records.write_jsonl([{"id": "old"}], p)
    with pytest.raises(TypeError):  # the second record cannot be written: nothing of the new list lands
        records.write_jsonl([{"id": "new-1"}, {"id": "new-2", "x": object()}, {"id": "new-3"}], p)
    assert p.read_text() == '{"id": "old"}\n' and _no_temp_files(tmp_path)


def test_bench_result_write_that_fails_keeps_the_old_file(tmp_path):
    """A write cut short by the file-size limit (as a full disk or quota would) in a child process
    leaves the previous result whole."""
    p = tmp_path / "result.json"
    bench_common.save_result({"name": "old"}, str(p))
    code = ("import resource, signal, sys\n"
            "from bench import common\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
            "common.save_result({'name': 'new', 'data': 'x' * 200000}, sys.argv[1])\n")
    out = subprocess.run([sys.executable, "-c", code, str(p)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0 and "File too large" in out.stderr, out.stderr[-2000:]
    assert json.loads(p.read_text()) == {"name": "old"} and _no_temp_files(tmp_path)
