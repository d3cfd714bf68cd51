"""Render docs/benchmarks.md from bench/results/*.json (written by `python -m bench`)."""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "docs" / "benchmarks.md"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _ratio_rows(rows: list[str]) -> list[str]:
    head = ["| Benchmark | Ours (JAX) | transformers | Speed-up | Bound and utilisation | Goal |",
            "|---|---|---|---|---|---|"]
    return head + rows if rows else []


def _vision(rows):
    r = _load("vision_b1")
    if r:
        j, t = r["timing"]["jax"]["median_s"], r["timing"]["torch"]["median_s"]
        rows.append(f"| vision tower, 26 blocks, 1 image 384x384 | {j:.2f} s | {t:.2f} s | {t / j:.2f}x | "
                    f"MFU {r['mfu_jax']:.0%} (torch {r['mfu_torch']:.0%}) of {r['matmul']['peak_flops'] / 1e9:.0f} "
                    f"GFLOP/s | >= 1.0x |")


def _prefill(rows):
    for n in (1, 2):
        r = _load(f"forward_rsunivlm-1b_{n}img")
        if r:
            j, t = r["timing"]["jax"]["median_s"], r["timing"]["torch"]["median_s"]
            rows.append(f"| prefill rsunivlm-1b, {n} image(s) + {r['text_tokens']} text tokens "
                        f"({r['sequence']} positions) | {j:.2f} s | {t:.2f} s | {t / j:.2f}x | matmul peak "
                        f"{r['matmul']['peak_flops'] / 1e9:.0f} GFLOP/s | >= 1.2x |")


def _decode(rows):
    r = _load("decode_rsunivlm-1b")
    if r:
        for row in r["results"]:
            rows.append(f"| decode rsunivlm-1b, batch {row['batch']}, {r['new_tokens']} new tokens | "
                        f"{row['jax']['decode_tok_s']:.2f} tok/s | {row['torch']['decode_tok_s']:.2f} tok/s | "
                        f"{row['speedup_jax_over_torch']:.2f}x | {row['jax_fraction_of_bound']:.0%} of the "
                        f"{row['bound_tok_s']:.1f} tok/s bandwidth bound ({r['bandwidth_bytes_s']['best'] / 1e9:.1f}"
                        f" GB/s read) | batch 1: >= 1.4x and >= 80% |")


def _train(lines):
    r = _load("train_step_rsunivlm-1b")
    if r:
        mfu = r["achieved_gflops"] / r["matmul_peak_gflops"]
        lines += ["", "## Training step (rsunivlm-1b, float32, batch 1, one image, "
                  f"{r['decoder_positions']} positions, optimiser {r['optimizer']})", "",
                  f"Step time {r['step_time_s']:.1f} s (compile + first step {r['first_step_s']:.0f} s); model FLOPs "
                  f"{r['model_tflop_per_step']:.2f} TFLOP per step; achieved {r['achieved_gflops']:.0f} GFLOP/s = "
                  f"**{mfu:.0%} of the measured matmul peak** ({r['matmul_peak_gflops']:.0f} GFLOP/s). Goal: >= 60%."]


def _data(lines):
    r = _load("data_pipeline")
    if r:
        lines += ["", "## Data pipeline (384x384, batch 8)", "", "| Workers | samples/s |", "|---|---|"]
        lines += [f"| {x.get('workers')} | {x.get('samples_per_s', float('nan')):.1f} |" for x in r["results"]]


def _convert(lines):
    r = _load("convert_full")
    if r:
        lines += ["", "## Conversion of a full-size rsunivlm-1b checkpoint (bf16 safetensors source)", "",
                  "| Step | Time | Peak RSS |", "|---|---|---|"]
        for k, v in r.items():
            if isinstance(v, dict) and "wall_s" in v:
                lines.append(f"| {k} | {v['wall_s']:.1f} s | {v['peak_rss_gib']:.2f} GiB |")


def write() -> Path:
    rows: list[str] = []
    _vision(rows)
    _prefill(rows)
    _decode(rows)
    machine = next((r["machine"] for r in map(_load, ("vision_b1", "forward_rsunivlm-1b_1img",
                                                      "decode_rsunivlm-1b")) if r), {})
    lines = ["# Benchmarks", "",
             "Produced by `.venv/bin/python -m bench` (render only: `--report-only`); every ratio comes from one "
             "process timing both implementations alternately (median of repetitions, warm-up excluded), "
             "float32 on CPU. See the per-benchmark JSON in `bench/results/` for individual runs and load averages.",
             "", f"Machine: {machine.get('cpus')} CPUs, {machine.get('platform')}, jax {machine.get('jax')}, "
             f"torch {machine.get('torch')}, transformers {machine.get('transformers')}.", ""]
    lines += _ratio_rows(rows)
    _train(lines)
    _data(lines)
    _convert(lines)
    notes = ROOT / "docs" / "benchmarks_notes.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    OUT.write_text("\n".join(lines) + "\n")
    return OUT


if __name__ == "__main__":
    print(write())
