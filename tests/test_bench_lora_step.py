"""bench/lora_step.py runs end to end in its reduced mode (tiny preset): a LoRA row that runs and a
full fine-tuning row that is only compiled, so the rsunivlm-1b measurement cannot rot."""
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import rsunivlm_jax as rs

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_lora_step_benchmark_reduced_mode(tmp_path):
    out = tmp_path / "lora_step.json"
    proc = subprocess.run([sys.executable, "-m", "bench.lora_step", "--preset", "tiny", "--steps", "2",
                           "--seq_len", "256", "--lora_rows", "bfloat16/bfloat16", "--full", "compile",
                           "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    n = rs.param_count(rs.presets.get("tiny"))
    assert result["preset"] == "tiny" and result["params"] == n and result["decoder_positions"] == 256
    assert result["full_adamw_state_gb"] == pytest.approx(16 * n / 1e9)
    assert result["machine"]["cpu_model"] and len(result["load_average_at_end"]) == 3
    lora, full = result["rows"]
    assert "error" not in lora, lora
    assert (lora["mode"], lora["base_dtype"], lora["compute_dtype"], lora["rank"], lora["ran"]) == (
        "lora", "bfloat16", "bfloat16", 16, True)
    assert 0 < lora["trained_params"] < n / 2
    assert len(lora["step_times_s"]) == 2 and all(t > 0 for t in lora["step_times_s"])
    assert lora["step_time_s"] == pytest.approx(sum(lora["step_times_s"]) / 2)  # the median of two
    assert math.isfinite(lora["final_loss"]) and lora["final_loss"] > 0
    assert 0 < lora["peak_rss_gib"] < result["memory_total_gb"]
    assert lora["xla_memory_bytes"]["temp"] > 0
    # The full step is compiled, not run: its arguments hold float32 parameters and two Adam moments.
    assert "error" not in full, full
    assert (full["mode"], full["ran"], full["trained_params"]) == ("full", False, n)
    assert "compiled, not run" in full["note"] and "step_time_s" not in full
    assert full["xla_memory_bytes"]["argument"] >= 12 * n
    mem = full["xla_memory_bytes"]
    assert mem["peak_estimate"] == mem["argument"] + mem["output"] + mem["temp"] - mem["alias"]
    assert tempfile.gettempdir() not in out.read_text() and str(ROOT) not in out.read_text()
