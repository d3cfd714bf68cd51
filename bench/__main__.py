"""Run the CPU benchmarks side by side with the PyTorch reference, then write docs/benchmarks.md.

    .venv/bin/python -m bench                     # everything (about half an hour on this 2-core CPU)
    .venv/bin/python -m bench --only vision prefill_1img
    .venv/bin/python -m bench --report-only       # re-render docs/benchmarks.md from bench/results/

Each benchmark is a separate process (so peak memory and JIT caches do not mix) and writes
`bench/results/<name>.json`; `bench.report` turns them into the results page.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

BENCHES = {
    "vision": ["-m", "bench.vision"],
    "prefill_1img": ["-m", "bench.forward", "--images", "1"],
    "prefill_2img": ["-m", "bench.forward", "--images", "2"],
    "decode": ["-m", "bench.decode", "--reps", "2"],
    "train_step": ["-m", "bench.train_step", "--out", str(RESULTS / "train_step_rsunivlm-1b.json")],
    "data_pipeline": ["bench/data_pipeline.py"],
    "convert": ["bench/convert_full.py", "--export", "--keep"],
}


def run(name: str) -> None:
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
        (RESULTS / "data_pipeline.json").write_text(json.dumps({"bench": "data_pipeline", "results": rows}, indent=2))
    if name == "convert":
        (RESULTS / "convert_full.json").write_text((Path(work) / "report.json").read_text())
        shutil.rmtree(work, ignore_errors=True)
    print(f"== {name} done in {time.perf_counter() - t0:.0f}s", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(BENCHES))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for name in args.only or BENCHES:
            run(name)
    from bench import report
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
