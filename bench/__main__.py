"""Run the CPU benchmarks side by side with the PyTorch reference, then write docs/benchmarks.md.

    .venv/bin/python -m bench                     # everything: ~60 min on a 2-core CPU with nothing else running
    .venv/bin/python -m bench --only vision prefill_1img
    .venv/bin/python -m bench --report-only       # re-render docs/benchmarks.md from bench/results/

Each benchmark is a separate process (so peak memory and JIT caches do not mix) and writes
`bench/results/<name>.json`; `bench.report` turns them into the results page. The wall time and
load average of each benchmark go to `bench/results/run_log.json`. Repetition counts are chosen
give every comparison at least 3 alternating rounds; the scripts take larger counts on their own.
The training-step profile (`profile_train`, for the non-GEMM share of the step) and the XLA:CPU
options (`xla_options`) are part of the run; other profiles are not, see docs/profiling.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

BENCHES = {
    "vision": ["-m", "bench.vision", "--reps", "5"],
    "prefill_1img": ["-m", "bench.forward", "--images", "1", "--reps", "5"],
    "prefill_2img": ["-m", "bench.forward", "--images", "2", "--reps", "3"],
    "decode": ["-m", "bench.decode", "--reps", "3"],
    "vision_bf16": ["-m", "bench.vision", "--reps", "3", "--dtype", "bfloat16"],
    "prefill_1img_bf16": ["-m", "bench.forward", "--images", "1", "--reps", "3", "--dtype", "bfloat16"],
    "decode_bf16": ["-m", "bench.decode", "--reps", "3", "--batches", "1", "--dtype", "bfloat16"],
    "train_compare": ["-m", "bench.train_compare", "--rounds", "3", "--steps", "1"],
    "profile_train": ["-m", "bench.profile", "train", "--preset", "llava-onevision-0.5b", "--optimizer", "adamw",
                      "--remat", "dots"],
    "xla_options": ["-m", "bench.xla_options", "--rounds", "3", "--steps", "1", "--vision_layers", "4",
                    "--vision_reps", "2"],
    "train_step": ["-m", "bench.train_step", "--steps", "2", "--out", str(RESULTS / "train_step_rsunivlm-1b.json")],
    "data_pipeline": ["bench/data_pipeline.py"],
    "convert": ["bench/convert_full.py", "--export", "--keep"],
}


def _stamp() -> dict:
    return {"measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average_at_end": list(os.getloadavg())}


def _write(path: Path, result: dict) -> None:
    """`result` without machine paths, written atomically (`bench.common.scrub_paths`)."""
    from bench.common import scrub_paths
    from rsunivlm_jax.fileio import atomic_write_json
    atomic_write_json(path, scrub_paths(result))


def run(name: str) -> dict:
    cmd = [sys.executable] + BENCHES[name]
    if name == "convert":
        work = tempfile.mkdtemp(prefix="rsu_convert_")
        cmd += ["--work", work]
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE)
    print(proc.stdout[-2000:])
    if proc.returncode:
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    if name == "data_pipeline":
        rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
        _write(RESULTS / "data_pipeline.json", {"bench": "data_pipeline", "results": rows, **_stamp()})
    if name == "convert":
        report = json.loads((Path(work) / "report.json").read_text())
        _write(RESULTS / "convert_full.json", dict(report, **_stamp()))
        shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t0
    print(f"== {name} done in {wall:.0f}s", flush=True)
    return {"bench": name, "wall_s": round(wall, 1), "load_average_at_end": list(os.getloadavg()),
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(BENCHES))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        log_path = RESULTS / "run_log.json"
        log = json.loads(log_path.read_text()) if log_path.exists() else {}
        t0 = time.perf_counter()
        for name in args.only or BENCHES:
            log[name] = run(name)
            log_path.write_text(json.dumps(log, indent=2))
        print(f"== all done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    from bench import report
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
