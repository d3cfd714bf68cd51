"""XLA:CPU options and remat policies, measured in one run: one child process per variant and round,
variants alternating within each round, so machine-load drifts fall on all of them.

    .venv/bin/python -m bench.xla_options                                  # the XLA_FLAGS variants, 3 rounds
    .venv/bin/python -m bench.xla_options --variants default dots_all full --rounds 3   # remat policies
    .venv/bin/python -m bench.xla_options --list

Each child (`--child NAME`) runs with the variant's XLA_FLAGS / thread settings and measures, in
this order: the float32 2048^2 GEMM rate of XLA and of torch (best of 5), the SigLIP tower forward
(rsunivlm-1b widths, `--vision_layers` blocks, one 384x384 image) and an AdamW training step of
llava-onevision-0.5b cut to `--layers` decoder and vision blocks (1,024 positions, one image; the
full LM head, embeddings and optimiser), median of `--steps` steps after the compiling one. Step
FLOP/s are model FLOPs (`train.metrics.flops_per_example`) per second, reported against the XLA
GEMM rate measured in the same child. Remat variants are measured by pointing the config's policy
name at another `jax.checkpoint_policies` entry in the child (`rsunivlm_jax.layers.scan.REMAT`).
Writes bench/results/xla_options.json (or `--name`).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (XLA_FLAGS added to the environment's, other environment variables, remat policy)
VARIANTS: dict[str, tuple[str, dict, str]] = {
    "default": ("", {}, "dots"),
    "onednn": ("--xla_cpu_use_onednn=true", {}, "dots"),
    # fails to compile the model in jax 0.10.2 ("partition compile failed" on a dot feeding a softmax)
    "onednn_dot": ("--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot", {}, "dots"),
    "ynn_individual_dot": ("--xla_cpu_experimental_ynn_fusion_type=individual_dot", {}, "dots"),
    "ynn_dot_eltwise_reduce": ("--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce", {}, "dots"),
    "ynn_off": ("--xla_cpu_experimental_ynn_fusion_type=", {}, "dots"),
    "xnn_dot": ("--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_experimental_xnn_fusion_type=dot", {}, "dots"),
    "no_multi_thread_eigen": ("--xla_cpu_multi_thread_eigen=false", {}, "dots"),
    "concurrency_scheduler": ("--xla_cpu_enable_concurrency_optimized_scheduler=true", {}, "dots"),
    # remat policies (default XLA options)
    "full": ("", {}, "full"),
    "dots_all": ("", {}, "dots_all"),
    "none": ("", {}, "none"),
}
DEFAULT_VARIANTS = ["default", "onednn", "ynn_individual_dot", "ynn_off", "no_multi_thread_eigen"]


def _gemm_rates(n: int = 2048, reps: int = 5) -> dict:
    from bench.common import peak_matmul_flops
    r = peak_matmul_flops(n=n, reps=reps)
    return {"xla_gflops": r["jax_flops"] / 1e9, "torch_gflops": r.get("torch_flops", 0.0) / 1e9}


def child(name: str, args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import rsunivlm_jax as rs

    _, _, remat = VARIANTS[name]
    policy_name = remat
    out = {"variant": name, "xla_flags": os.environ.get("XLA_FLAGS", ""), "remat": remat}
    out["gemm_before"] = _gemm_rates()

    # Vision tower forward (rsunivlm-1b widths).
    cfg = rs.presets.get("rsunivlm-1b")
    small = cfg.replace(decoder={"vocab_size": 64, "num_hidden_layers": 1},
                        vision={"num_hidden_layers": args.vision_layers, "num_layers_used": args.vision_layers})
    graphdef, params = rs.init(small, 0)
    px = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 384, 384, 3)).astype(np.float32))
    run = lambda: rs.vision_features(graphdef, params, px).block_until_ready()  # noqa: E731
    run()
    times = []
    for _ in range(args.vision_reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    from bench.vision import vision_flops
    out["vision_s"] = statistics.median(times)
    out["vision_gflops"] = vision_flops(small, 1) / out["vision_s"] / 1e9
    del params

    # Training step of a cut llava-onevision-0.5b.
    from bench.train_step import jitted_step, leafwise_init
    from rsunivlm_jax.train import data as data_lib, metrics as metrics_lib
    tcfg = rs.presets.get("llava-onevision-0.5b").replace(
        remat_policy=policy_name, decoder={"num_hidden_layers": args.layers},
        vision={"num_hidden_layers": args.layers, "num_layers_used": args.layers})
    text_len = args.seq_len - (tcfg.tokens_per_image - 1)
    graphdef, params = leafwise_init(tcfg)
    fn, state = jitted_step(tcfg, graphdef, params, "adamw")
    del params
    src = data_lib.RandomBatches(tcfg, global_batch=1, text_len=text_len, num_images=1, process_index=0,
                                 process_count=1)
    batches = [{k: jnp.asarray(v) for k, v in src.batch(i).items()} for i in range(args.steps + 1)]
    t0 = time.perf_counter()
    state, m = fn(state, batches[0])
    jax.block_until_ready(m)
    out["first_step_s"] = time.perf_counter() - t0
    steps = []
    for b in batches[1:]:
        t0 = time.perf_counter()
        state, m = fn(state, b)
        jax.block_until_ready((state, m))
        steps.append(time.perf_counter() - t0)
    out["loss"] = float(m["loss"])
    out["step_s"] = statistics.median(steps)
    out["step_times_s"] = steps
    flops = metrics_lib.flops_per_example(tcfg, text_len, 1)["total"]
    out["step_gflops"] = flops / out["step_s"] / 1e9
    del state, batches
    out["gemm_after"] = _gemm_rates()
    out["xla_gemm_gflops"] = max(out["gemm_before"]["xla_gflops"], out["gemm_after"]["xla_gflops"])
    out["torch_gemm_gflops"] = max(out["gemm_before"]["torch_gflops"], out["gemm_after"]["torch_gflops"])
    out["step_fraction_of_xla_gemm"] = out["step_gflops"] / out["xla_gemm_gflops"]
    out["vision_fraction_of_xla_gemm"] = out["vision_gflops"] / out["xla_gemm_gflops"]
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    out["load_average"] = list(os.getloadavg())
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=sorted(VARIANTS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--layers", type=int, default=2, help="decoder and vision blocks of the training step")
    p.add_argument("--vision_layers", type=int, default=8, help="blocks of the vision-tower forward")
    p.add_argument("--vision_reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--name", default="xla_options")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    if args.list:
        for k, (flags, env, remat) in VARIANTS.items():
            print(f"{k:24s} remat={remat:8s} {flags} {env or ''}")
        return {}
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return {}
    sys.path.insert(0, str(ROOT))
    from bench.common import cpu_model, machine_info, write_result
    load_start = os.getloadavg()
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    passthrough = ["--layers", str(args.layers), "--vision_layers", str(args.vision_layers), "--vision_reps",
                   str(args.vision_reps), "--steps", str(args.steps), "--seq_len", str(args.seq_len)]
    for r in range(args.rounds):
        for v in args.variants:
            flags, env_extra, _ = VARIANTS[v]
            env = dict(os.environ, **env_extra)
            env["XLA_FLAGS"] = " ".join(x for x in (os.environ.get("XLA_FLAGS", ""), flags) if x)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "bench.xla_options", "--child", v] + passthrough,
                                  cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"round {r + 1} {v}: failed (exit {proc.returncode})", flush=True)
                runs[v].append({"failed": proc.returncode})
                continue
            res = json.loads(line[len("RESULT "):])
            res["child_wall_s"] = time.perf_counter() - t0
            runs[v].append(res)
            print(f"round {r + 1} {v}: step {res['step_s']:.2f} s ({res['step_fraction_of_xla_gemm']:.0%} of XLA "
                  f"GEMM {res['xla_gemm_gflops']:.0f}), vision {res['vision_s']:.2f} s, GEMM torch "
                  f"{res['torch_gemm_gflops']:.0f}, load {res['load_average'][0]:.1f}", flush=True)
    summary = {}
    for v, rs_ in runs.items():
        ok = [x for x in rs_ if "failed" not in x]
        if not ok:
            summary[v] = {"failed": True}
            continue
        med = lambda key: statistics.median(x[key] for x in ok)  # noqa: E731
        summary[v] = {k: med(k) for k in ("step_s", "vision_s", "xla_gemm_gflops", "torch_gemm_gflops",
                                          "step_fraction_of_xla_gemm", "vision_fraction_of_xla_gemm",
                                          "first_step_s", "peak_rss_gib")}
        summary[v]["rounds_ok"] = len(ok)
    base = summary.get(args.variants[0], {})
    for v, s in summary.items():
        if "step_s" in s and "step_s" in base:
            s["step_vs_first"] = base["step_s"] / s["step_s"]
            s["vision_vs_first"] = base["vision_s"] / s["vision_s"]
    result = {"bench": "xla_options", "variants": {v: {"xla_flags": VARIANTS[v][0], "env": VARIANTS[v][1],
                                                       "remat": VARIANTS[v][2]} for v in args.variants},
              "settings": {k: v for k, v in vars(args).items() if k not in ("child", "list")},
              "summary": summary, "runs": runs, "cpu_model": cpu_model(), "load_average_start_end":
              [list(load_start), list(os.getloadavg())], "machine": machine_info()}
    write_result(args.name, result)
    for v, s in summary.items():
        if "step_s" in s:
            print(f"{v:24s} step {s['step_s']:.2f} s ({s['step_vs_first']:.2f}x), vision {s['vision_s']:.2f} s "
                  f"({s['vision_vs_first']:.2f}x), XLA GEMM {s['xla_gemm_gflops']:.0f}, step at "
                  f"{s['step_fraction_of_xla_gemm']:.0%} of it, peak RSS {s['peak_rss_gib']:.1f} GiB")
    return result


if __name__ == "__main__":
    main()
