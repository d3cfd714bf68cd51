"""bench/gpu.py runs end to end in its reduced CPU mode, so the GPU script cannot rot."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_reduced_mode(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", "bench/gpu.sh", "--reduced", "--out-dir", str(tmp_path), "--time-limit", "580"],
                          cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["preset"] == "tiny"
    train = result["train"]
    assert train["step_s"] > 0 and train["model_flops_per_step"] > 0 and train["loss"] == train["loss"]
    lora = result["lora"]
    assert lora["step_s"] > 0 and lora["rank"] == 16 and lora["base_dtype"] == "bfloat16"
    assert lora["loss"] == lora["loss"] and lora["xla_temp_bytes"] > 0
    assert result["train_mixed"]["step_s"] > 0 and result["train_mixed"]["vs_homogeneous"] > 0
    for b in ("batch_1", "batch_2"):
        assert result["decode"][b]["new_tokens"] == 8 and result["decode"][b]["prefill_s"] > 0
