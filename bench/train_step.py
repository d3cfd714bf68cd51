"""Full-size training-step benchmark on this machine, next to its measured matmul peak.

    .venv/bin/python -m bench.train_step                      # rsunivlm-1b, fp32, batch 1, 1 image, 1,024 positions
    .venv/bin/python -m bench.train_step --optimizer adamw    # needs ~27 GB more than SGD: see below
    .venv/bin/python -m bench.train_step --preset tiny --steps 5   # quick check

Activations are rematerialised with the "dots" policy by default (`--remat`): without it the
step needs ~12 GB of saved activations at 1,024 positions, which does not fit here.

What is timed: the jitted `rsunivlm_jax.train.step.make_train_step` (forward, backward, global-norm
clipping, optimiser update, NaN guard) with the state donated, batch 1, one 384x384 image and a
text length chosen so the decoder sees `--seq_len` positions: T = seq_len - (tokens_per_image - 1)
per image, i.e. 295 text ids (one of them the image placeholder) + 729 more image positions = 1,024
for the default. The first call
(compilation) is reported separately; the step time is the median of `--steps` further calls.

Optimiser: plain SGD by default. AdamW's two float32 moments add 2 x 6.6 GB to the 6.6 GB of
parameters and 6.6 GB of gradients of the 1.66 B-parameter model, which does not fit in this
machine's 24 GB; the model FLOPs are identical (the optimiser's elementwise work is not counted).

Model FLOPs: `rsunivlm_jax.train.metrics.flops_per_example` (6 x active matmul parameters x tokens
for every trained part including the vision tower, one expert per token, lm_head on text positions,
causal attention at half). Peak: the best float32 matmul FLOP/s measured in the same process,
before and after the timed steps (the machine may be shared): `jnp.dot` on 2048^2 and 4096^2
matrices and `bench.common.peak_matmul_flops` (XLA and torch GEMM), 2 N^3 FLOPs per product. Results go to stdout and `--out` (e.g. bench/results/train_step_rsunivlm-1b.json).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp


def _load1() -> float | None:
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:
        return None


def measure_matmul_peak(sizes=(2048, 4096), reps: int = 5) -> dict:
    """Best observed float32 matmul FLOP/s (and per size), per wall second and per CPU second of
    this process (the latter is what a shared machine cannot take away)."""
    out, per_cpu = {}, {}
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        f = jax.jit(lambda x, y: x @ y)
        f(a, b).block_until_ready()
        best, best_cpu = float("inf"), float("inf")
        for _ in range(reps):
            t, c = time.perf_counter(), time.process_time()
            f(a, b).block_until_ready()
            best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
        out[n] = 2.0 * n ** 3 / best
        per_cpu[n] = 2.0 * n ** 3 / best_cpu
    return {"per_size": {str(k): v for k, v in out.items()}, "peak_flops": max(out.values()),
            "per_cpu_second": max(per_cpu.values())}


def jitted_step(cfg, graphdef, params, optimizer: str):
    """(jitted train step with the state donated, initial state) for `params`; the benchmark's
    optimiser settings (lr 1e-5, clip 1.0, no weight decay)."""
    from rsunivlm_jax.train import optim, step as step_lib
    spec = optim.OptimSpec(total_steps=1000, lr=1e-5, name=optimizer, weight_decay=0.0, clip=1.0)
    opt = optim.make_optimizer(spec, params)
    fn = jax.jit(step_lib.make_train_step(graphdef, opt, num_experts=cfg.gmoe.num_experts,
                                          model_config=cfg, homogeneous_batches=True), donate_argnums=(0,))
    return fn, step_lib.init_state(params, opt)


def leafwise_init(cfg):
    """(graphdef, params) with the model's shapes, created one leaf at a time (low peak memory)."""
    import rsunivlm_jax as rs
    from rsunivlm_jax.train.optim import path_str

    graphdef, abstract = rs.abstract_init(cfg)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    out = []
    for i, (path, a) in enumerate(leaves):
        name = path_str(path)
        if name.endswith("/scale"):
            out.append(jnp.ones(a.shape, a.dtype))
        elif name.endswith("/bias"):
            out.append(jnp.zeros(a.shape, a.dtype))
        else:
            out.append(jax.jit(lambda k, s=a.shape, d=a.dtype: 0.02 * jax.random.normal(k, s, d))(jax.random.key(i)))
    return graphdef, jax.tree_util.tree_unflatten(jax.tree.structure(abstract), out)


def time_steps(fn, state, batches, log):
    """Runs `fn(state, batch)` over `batches`: the first call (compile + run) apart, then each later
    one timed (wall and CPU seconds, load). Returns (state, metrics, first_s, times, cpu_times, loads)."""
    t0 = time.perf_counter()
    state, m = fn(state, batches[0])
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    log(f"first step (compile + run) {first:.1f} s, loss {float(m['loss']):.4f}")
    times, cpu_times, loads = [], [], []
    for i in range(1, len(batches)):
        t0, c0 = time.perf_counter(), time.process_time()
        state, m = fn(state, batches[i])
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        loads.append(_load1())
        log(f"step {i}: {times[-1]:.2f} s wall, {cpu_times[-1]:.1f} s CPU, loss {float(m['loss']):.4f}, "
            f"load {loads[-1]}")
    return state, m, first, times, cpu_times, loads


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="rsunivlm-1b")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seq_len", type=int, default=1024, help="decoder positions (text + image tokens)")
    parser.add_argument("--num_images", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the compiling one")
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    parser.add_argument("--remat", default="dots", choices=("none", "full", "dots"),
                        help="'none' keeps every activation: ~12 GB more at 1,024 positions (full attention "
                             "probabilities of 50 layers), which does not fit next to params + grads in 24 GB")
    parser.add_argument("--init", default="leafwise", choices=("leafwise", "model"),
                        help="'model': rs.init (peaks near 17 GB for the 1.66 B model); 'leafwise': one leaf at "
                             "a time (norm scales 1, biases 0, weights N(0, 0.02)), same shapes, small peak")
    parser.add_argument("--out", default="", help="also write the result JSON here")
    args = parser.parse_args(argv)

    import rsunivlm_jax as rs
    from rsunivlm_jax.train import data as data_lib, metrics as metrics_lib

    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    peak = measure_matmul_peak()
    try:  # the shared benchmark helper also measures torch's GEMM; the better one is the machine's peak
        from bench.common import machine_info, peak_matmul_flops
        shared = peak_matmul_flops(n=2048)
        peak["shared_bench_common"] = shared
        peak["peak_flops"] = max(peak["peak_flops"], shared["peak_flops"])
        machine = machine_info()
    except ImportError:
        machine = {}
    log(f"matmul peak {peak['peak_flops'] / 1e9:.1f} GFLOP/s {peak}")

    cfg = rs.presets.get(args.preset).replace(dtype=args.dtype, remat_policy=args.remat)
    text_len = args.seq_len - args.num_images * (cfg.tokens_per_image - 1)
    if text_len < 8:
        raise SystemExit(f"--seq_len {args.seq_len} leaves no room for text next to {args.num_images} image(s)")
    t0 = time.perf_counter()
    if args.init == "model":
        graphdef, params = rs.init(cfg, 0)
    else:
        graphdef, params = leafwise_init(cfg)
    jax.block_until_ready(params)
    log(f"init ({args.init}) {rs.param_count(cfg) / 1e9:.3f} B params in {time.perf_counter() - t0:.1f} s")
    fn, state = jitted_step(cfg, graphdef, params, args.optimizer)
    del params
    src = data_lib.RandomBatches(cfg, global_batch=args.batch, text_len=text_len, num_images=args.num_images,
                                 process_index=0, process_count=1)
    batches = [{k: jnp.asarray(v) for k, v in src.batch(i).items()} for i in range(args.steps + 1)]

    state, m, first, times, cpu_times, loads = time_steps(fn, state, batches, log)

    # Peak again after the steps (the machine may be shared): the machine's peak is the best seen.
    del state, batches
    after = measure_matmul_peak()
    peak["after_steps"] = after["per_size"]
    peak["peak_flops"] = max(peak["peak_flops"], after["peak_flops"])
    peak["per_cpu_second"] = max(peak["per_cpu_second"], after["per_cpu_second"])
    log(f"matmul peak after the steps {after['peak_flops'] / 1e9:.1f} GFLOP/s")

    parts = metrics_lib.flops_per_example(cfg, text_len, args.num_images)
    flops = args.batch * parts["total"]
    step_time = statistics.median(times)
    achieved = flops / step_time
    cores = os.cpu_count() or 1
    cpu_step = statistics.median(cpu_times)
    result = {
        "preset": args.preset, "dtype": args.dtype, "optimizer": args.optimizer, "remat": args.remat,
        "batch": args.batch, "num_images": args.num_images, "text_len": text_len, "decoder_positions": args.seq_len,
        "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
        "first_step_s": first, "step_times_s": times, "step_time_s": step_time,
        "model_tflop_per_step": flops / 1e12, "model_tflop_by_part": {k: v / 1e12 for k, v in parts.items()},
        "achieved_gflops": achieved / 1e9, "matmul_peak_gflops": peak["peak_flops"] / 1e9,
        "matmul_peak_by_size_gflops": {k: v / 1e9 for k, v in peak["per_size"].items()},
        "matmul_peak_detail": peak.get("shared_bench_common"),
        "matmul_peak_after_steps_gflops": {k: v / 1e9 for k, v in peak["after_steps"].items()},
        "machine": machine,
        "fraction_of_measured_peak": achieved / peak["peak_flops"],
        # Contention-robust view on a shared machine: model FLOPs per CPU-second of this process
        # against the matmul's FLOPs per CPU-second (both measured here).
        "cpu_seconds_per_step": cpu_times, "load_average_after_each_step": loads, "cpu_cores": cores,
        "matmul_peak_gflops_per_cpu_second": peak["per_cpu_second"] / 1e9,
        "model_gflops_per_cpu_second": flops / cpu_step / 1e9,
        "fraction_of_peak_per_cpu_second": flops / cpu_step / peak["per_cpu_second"],
        "tokens_per_s": args.batch * args.seq_len / step_time,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average_at_end": list(os.getloadavg()),
    }
    from bench.common import save_result
    save_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
