"""Training step, JAX vs PyTorch: forward + backward + AdamW, batch 1, one 384x384 image, 1,024
decoder positions, float32 CPU. Writes bench/results/train_compare_<preset>.json.

    .venv/bin/python -m bench.train_compare                       # llava-onevision-0.5b, 1 round, 2 steps each
    .venv/bin/python -m bench.train_compare --rounds 2 --steps 3  # more samples (about 2.5x longer)
    .venv/bin/python -m bench.train_compare --preset tiny --seq_len 128   # quick check

Why this configuration: full AdamW on rsunivlm-1b (1.66 B float32 parameters: parameters,
gradients and two moments = 26.5 GB) does not fit in this machine's 24 GB in either framework.
The dense stage-1 model it was upcycled from (`llava-onevision-0.5b`: same SigLIP tower,
connector and Qwen2-0.5B decoder, one MLP instead of three experts, tied head; 894 M parameters,
4 x 3.58 GB = 14.3 GB of state) does, and does the same FLOPs per token as rsunivlm-1b (G-MoE
runs one expert per token). Both sides train every parameter with AdamW after global-norm
clipping at 1.0 (see bench/train_torch.py for the transformers side).

Activations: keeping every activation of 1,024 positions does not fit next to the 14.3 GB of
state, so both recompute. The like-for-like pair is JAX `remat_policy="full"` (each layer's
forward recomputed in the backward pass) vs transformers activation checkpointing (the same, per
decoder and vision layer); this is the headline ratio. A second JAX block runs
`remat_policy="dots"` (matmul outputs kept, only the cheap element-wise work recomputed), which
needs no more peak memory here (the peak is in the optimiser update, not in the backward pass;
`python -m bench.profile memory`) and has no transformers counterpart (`--jax_remat` picks the
JAX blocks; the first one is the headline).

Timing: each framework runs in its own process (their ~15 GB footprints cannot coexist), in
blocks: JAX (full), transformers, JAX (dots), repeated `--rounds` times. Each block excludes its first step
(JAX: compilation + first run; torch: first run, which also allocates the AdamW moments) and
times `--steps` more; the result is the median over all timed steps of each framework. Every
block measures the float32 GEMM peak (XLA and torch, 2048^2 and 4096^2) before and after its
steps; MFU uses the best peak seen in the whole run. Model FLOPs:
`rsunivlm_jax.train.metrics.flops_per_example` (remat recomputation not counted).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_block(framework: str, args, out: Path, remat: str = "full") -> dict:
    py = sys.executable
    common = ["--preset", args.preset, "--seq_len", str(args.seq_len), "--steps", str(args.steps), "--out", str(out)]
    if framework == "jax":
        cmd = [py, "-m", "bench.train_step", "--optimizer", "adamw", "--remat", remat] + common
    else:
        cmd = [py, "-m", "bench.train_torch", "--attn", args.torch_attn, "--checkpointing",
               args.torch_checkpointing] + common
    print(f"== {framework}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{framework} block failed (exit {os.waitstatus_to_exitcode(status)}): {' '.join(cmd)}")
    r = json.loads(out.read_text())
    r["block_wall_s"] = time.perf_counter() - t0
    r["child_peak_rss_gib"] = usage.ru_maxrss / 2 ** 20
    print(f"   steps {[round(t, 1) for t in r['step_times_s']]} s, first {r['first_step_s']:.0f} s, "
          f"peak RSS {r['child_peak_rss_gib']:.1f} GiB", flush=True)
    return r


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llava-onevision-0.5b")
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=2, help="timed steps per block (after the excluded first one)")
    p.add_argument("--rounds", type=int, default=1, help="JAX block then torch block, this many times")
    p.add_argument("--jax_remat", nargs="+", default=["full", "dots"], choices=("full", "dots", "none"),
                   help="one JAX block per policy in each round; the first is compared with transformers")
    p.add_argument("--torch_attn", default="sdpa", choices=("sdpa", "eager"))
    p.add_argument("--torch_checkpointing", default="on", choices=("on", "off"))
    p.add_argument("--name", default=None, help="result name (default train_compare_<preset>)")
    p.add_argument("--results_dir", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)

    load_start = os.getloadavg()
    # JAX (headline policy), transformers, then any further JAX policies: torch sits between JAX blocks.
    sides = [f"jax_{args.jax_remat[0]}", "torch"] + [f"jax_{remat}" for remat in args.jax_remat[1:]]
    blocks = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="rsu_train_compare_") as tmp:
        for r in range(args.rounds):
            for side in sides:
                fw, _, remat = side.partition("_")
                blocks[side].append(run_block(fw, args, Path(tmp) / f"{side}_{r}.json", remat or "full"))

    def peak_of(b: dict) -> float:
        seen = [b.get("matmul_peak_gflops", 0.0)]
        seen += list((b.get("matmul_peak_after_steps_gflops") or {}).values())
        seen += [b["matmul"]["after"]["peak_flops"] / 1e9] if "matmul" in b else []
        return max(seen)

    peak = max(peak_of(b) for bs in blocks.values() for b in bs)

    def gemm_rates(b: dict) -> tuple[float, float]:
        """(XLA, torch) float32 GEMM GFLOP/s measured by one block (JAX blocks: bench.train_step's
        XLA sizes before and after the steps plus bench.common's pair; torch blocks: the pair)."""
        if "matmul" in b:  # torch block
            pairs = [b["matmul"][k] for k in ("before", "after") if k in b["matmul"]]
        else:
            pairs = [b.get("matmul_peak_detail") or {}]
        xla = [p.get("jax_flops", 0.0) / 1e9 for p in pairs]
        xla += list((b.get("matmul_peak_by_size_gflops") or {}).values())
        xla += list((b.get("matmul_peak_after_steps_gflops") or {}).values())
        return max(xla or [0.0]), max([p.get("torch_flops", 0.0) / 1e9 for p in pairs] or [0.0])

    xla_gemm = max(gemm_rates(b)[0] for bs in blocks.values() for b in bs)
    torch_gemm = max(gemm_rates(b)[1] for bs in blocks.values() for b in bs)
    first = blocks[sides[0]][0]
    flops = first["model_tflop_per_step"] * 1e12
    out = {"bench": "train_compare", "preset": args.preset, "dtype": "float32", "optimizer": "adamw", "batch": 1,
           "num_images": 1, "decoder_positions": args.seq_len, "text_len": first["text_len"],
           "rounds": args.rounds, "steps_per_block": args.steps, "jax_remat": args.jax_remat[0],
           "jax_remat_variants": args.jax_remat,
           "torch_attn": args.torch_attn, "torch_checkpointing": args.torch_checkpointing,
           "model_tflop_per_step": flops / 1e12, "matmul_peak_gflops": peak,
           "xla_gemm_gflops": xla_gemm, "torch_gemm_gflops": torch_gemm,
           "load_average_start_end": [load_start, os.getloadavg()]}
    for side, bs in blocks.items():
        times = [t for b in bs for t in b["step_times_s"]]
        med = statistics.median(times)
        out[side] = {"step_time_s": med, "step_times_s": times, "first_step_s": [b["first_step_s"] for b in bs],
                   "achieved_gflops": flops / med / 1e9, "mfu": flops / med / (peak * 1e9),
                   "fraction_of_xla_gemm": flops / med / (xla_gemm * 1e9) if xla_gemm else None,
                   "gemm_gflops_per_block": [gemm_rates(b) for b in bs],
                   "peak_rss_gib": max(b["child_peak_rss_gib"] for b in bs),
                   "cpu_seconds_per_step": [c for b in bs for c in b.get("cpu_seconds_per_step", [])],
                   "load_average_after_each_step": [x for b in bs for x in b.get("load_average_after_each_step", [])],
                   "block_wall_s": [b["block_wall_s"] for b in bs], "matmul_peak_gflops": [peak_of(b) for b in bs]}
    out["jax"] = out[sides[0]]  # the headline (like-for-like) JAX side
    for side in (x for x in sides if x != "torch"):
        out[side]["speedup_over_torch"] = out["torch"]["step_time_s"] / out[side]["step_time_s"]
    out["speedup_jax_over_torch"] = out["torch"]["step_time_s"] / out["jax"]["step_time_s"]
    out["machine"] = first.get("machine", {})
    out["params"] = blocks["torch"][0].get("params")
    name = args.name or f"train_compare_{args.preset}"
    sys.path.insert(0, str(ROOT))
    from bench.common import write_result
    write_result(name, out, out_dir=args.results_dir)
    for side in sides:
        x = out[side]
        print(f"{side}: {x['step_time_s']:.1f} s/step, {x['mfu']:.0%} of {peak:.0f} GFLOP/s, "
              f"{x['fraction_of_xla_gemm'] or 0:.0%} of XLA's {xla_gemm:.0f}"
              + (f", {x['speedup_over_torch']:.2f}x transformers" if "speedup_over_torch" in x else ""), flush=True)
    return out


if __name__ == "__main__":
    main()
