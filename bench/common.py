"""Shared benchmark helpers: alternating timing with medians, machine facts, JSON results."""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from typing import Callable


def time_alternating(fns: dict[str, Callable[[], object]], *, reps: int = 5, warmup: int = 1) -> dict[str, dict]:
    """Runs each fn `warmup` times, then `reps` rounds alternating between them; returns medians."""
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for r in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            print(f"  rep {r + 1}/{reps} {name}: {times[name][-1]:.3f}s", flush=True)
    return {name: {"median_s": statistics.median(ts), "runs_s": ts} for name, ts in times.items()}


def machine_info() -> dict:
    import jax
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu_model": cpu_model(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}
    try:
        import torch
        import transformers
        info.update(torch=torch.__version__, transformers=transformers.__version__,
                    torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    return info


def cpu_model() -> str:
    """The CPU's model name (`lscpu`'s "Model name"), from /proc/cpuinfo; "" where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def peak_matmul_flops(n: int = 2048, reps: int = 5, dtype: str = "float32") -> dict:
    """Measured GEMM FLOP/s of an n x n product in `dtype` with XLA and with torch (the better is
    the machine's peak). bfloat16: torch uses the CPU's AMX / AVX512-BF16 units, XLA:CPU (jax
    0.10) upcasts the dot to float32."""
    import jax
    import jax.numpy as jnp
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best_jax = min(_timed(lambda: f(a).block_until_ready()) for _ in range(reps))
    out = {"jax_flops": 2 * n ** 3 / best_jax}
    try:
        import torch
        t = torch.ones(n, n, dtype=getattr(torch, dtype))
        t @ t
        best_torch = min(_timed(lambda: t @ t) for _ in range(reps))
        out["torch_flops"] = 2 * n ** 3 / best_torch
    except ImportError:
        pass
    out["peak_flops"] = max(out.values())
    out["dtype"] = dtype
    return out


def dtype_suffix(dtype: str) -> str:
    """Result-file suffix: "" for float32 (the historical names), "_bf16" for bfloat16."""
    return "" if dtype == "float32" else "_bf16"


def best_time(fn, reps: int) -> float:
    """Shortest of `reps` timed calls of `fn`, after one untimed warm-up call."""
    fn()
    return min(_timed(fn) for _ in range(reps))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def write_result(name: str, result: dict, out_dir: str = "bench/results") -> str:
    """Writes `<out_dir>/<name>.json`, stamped with the time and the load average (1, 5, 15 min):
    timings taken while other jobs run are noisy, and the report says so."""
    os.makedirs(out_dir, exist_ok=True)
    result.setdefault("measured_at", time.strftime("%Y-%m-%d %H:%M:%S"))
    result.setdefault("load_average_at_end", list(os.getloadavg()))
    path = os.path.join(out_dir, f"{name}.json")
    save_result(result, path)
    return path


def scrub_paths(obj):
    """`obj` with this machine's paths taken out of its strings: the interpreter -> ``python``, the
    repository -> ``.``, a temporary directory -> ``<tmp>``, the home directory -> ``~``."""
    if isinstance(obj, dict):
        return {k: scrub_paths(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub_paths(v) for v in obj]
    if not isinstance(obj, str):
        return obj
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for exe in {sys.executable, os.path.realpath(sys.executable)}:
        obj = obj.replace(exe, "python")
    obj = re.sub(re.escape(tempfile.gettempdir()) + r"/[^/\s]+", "<tmp>", obj)
    obj = re.sub(re.escape(repo) + r"(/|\b)", lambda m: "./" if m.group(1) == "/" else ".", obj)
    return obj.replace(os.path.expanduser("~"), "~") if os.path.expanduser("~") not in ("", "/") else obj


def save_result(result: dict, path: str | None) -> None:
    """Prints `result` as JSON and, when `path` is given, writes it there (temporary name + rename,
    so an interrupted run leaves the previous result whole). Machine paths are not recorded."""
    result = scrub_paths(result)
    print(json.dumps(result, indent=2))
    if path:
        from rsunivlm_jax.fileio import atomic_write_json
        atomic_write_json(path, result)
