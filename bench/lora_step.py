"""Memory and time of a LoRA training step against full fine-tuning, rsunivlm-1b on this machine.

    .venv/bin/python -m bench.lora_step                          # 3 LoRA rows + full AdamW
    .venv/bin/python -m bench.lora_step --preset tiny --steps 2  # quick check

Shapes: batch 1, one 384x384 image, 1,024 decoder positions (295 text ids + 729 more image
positions), remat "dots". LoRA rows (`--lora_rows`, base dtype/compute dtype): float32/float32,
bfloat16/float32 and bfloat16/bfloat16 (configs/lora_finetune.py); the full step computes in
float32. The LoRA step is the trainer's
(`rsunivlm_jax.lora.step.make_train_step`): rank 16, alpha 32 on the decoder's attention
projections, every G-MoE expert's gate/up/down and the connector; AdamW over the adapters; the
base frozen and passed once per call (not donated, not differentiated), stored in float32 or in
bfloat16 (`lora.base_dtype`). Full fine-tuning: the step `bench.train_step` times, with AdamW
over all 1.66 B parameters, whose parameters, gradients and two moments alone take 4 x 4 bytes
per parameter; it is run only when that state fits in the machine's memory (`--full auto`),
otherwise it is compiled, not run: its row gives the computed state size and XLA's memory
analysis of the compiled step.

Each configuration runs in its own process, so its peak RSS (`ru_maxrss`) is its own: init (one
leaf at a time), compile (XLA's `memory_analysis`: arguments, outputs, temporaries, donated
aliases), first step, then `--steps` timed steps (median). Results: stdout and `--out` (default
bench/results/lora_step_<preset>.json), with the CPU model and the load average (the machine
may be shared: timings taken next to other jobs are slower).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

TARGETS = ("attention", "experts", "connector")


def _mem_total_bytes() -> int:
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _memory_analysis(compiled) -> dict:
    """XLA's compiled memory analysis (bytes): arguments, outputs, temporaries, donated aliases."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
    out["peak_estimate"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def run_child(args) -> dict:
    """One configuration in this process: init, compile (XLA's memory analysis), timed steps, peak
    RSS. `--compile_only`: the base and state are abstract; nothing is allocated or run."""
    import jax
    import jax.numpy as jnp

    import rsunivlm_jax as rs
    from bench.train_step import jitted_step, leafwise_init, time_steps
    from rsunivlm_jax.lora import adapters as adapters_lib, step as lora_step
    from rsunivlm_jax.lora.config import LoraConfig
    from rsunivlm_jax.lora.train import expert_axes
    from rsunivlm_jax.train import data as data_lib, optim, step as step_lib

    cfg = rs.presets.get(args.preset).replace(dtype=args.compute_dtype, remat_policy=args.remat,
                                               param_dtype=args.base_dtype)
    text_len = args.seq_len - (cfg.tokens_per_image - 1)
    t0 = time.perf_counter()
    if args.compile_only:
        graphdef, base = rs.abstract_init(cfg)
    else:
        graphdef, base = leafwise_init(cfg)  # leaves in cfg.param_dtype, one at a time
        jax.block_until_ready(base)
        _log(f"{args.mode}: base {rs.param_count(cfg) / 1e9:.3f} B params ({args.base_dtype}) in "
             f"{time.perf_counter() - t0:.1f} s")
    src = data_lib.RandomBatches(cfg, global_batch=1, text_len=text_len, num_images=1, process_index=0,
                                 process_count=1)
    batches = [{k: jnp.asarray(v) for k, v in src.batch(i).items()} for i in range(args.steps + 1)]
    if args.mode == "lora":
        lora = LoraConfig(rank=args.rank, alpha=2.0 * args.rank, targets=TARGETS)
        adapters = adapters_lib.init(cfg, lora, 0)
        spec = optim.OptimSpec(total_steps=1000, lr=1e-4, weight_decay=0.0, clip=1.0)
        opt = optim.make_optimizer(spec, adapters)
        fn = jax.jit(lora_step.make_train_step(adapters_lib.graphdef(cfg, lora), opt,
                                               num_experts=cfg.gmoe.num_experts, expert_axes=expert_axes(cfg, lora)),
                     donate_argnums=(0,))
        state = step_lib.init_state(adapters, opt)
        trained = sum(math.prod(x.shape) for x in jax.tree.leaves(adapters))
        lowered = fn.lower(state, base, batches[0])
    else:  # the full-model step as bench.train_step runs it, with AdamW
        if args.compile_only:  # the state's shapes only (26.5 GB for rsunivlm-1b)
            built = {}

            def build(params):
                built["fn"], st = jitted_step(cfg, graphdef, params, "adamw")
                return st
            state = jax.eval_shape(build, base)
            fn = built["fn"]
        else:
            fn, state = jitted_step(cfg, graphdef, base, "adamw")
        del base
        trained = rs.param_count(cfg)
        lowered = fn.lower(state, batches[0])
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    memory = _memory_analysis(compiled)
    _log(f"{args.mode} ({args.base_dtype} base, {args.compute_dtype} compute): compiled in {compile_s:.1f} s, XLA memory {memory}")
    row = {"mode": args.mode, "base_dtype": args.base_dtype, "compute_dtype": args.compute_dtype, "rank": args.rank if args.mode == "lora" else None,
           "trained_params": int(trained), "compile_s": compile_s, "xla_memory_bytes": memory}
    if args.compile_only:
        return {**row, "ran": False, "peak_rss_gib_compile_only": _peak_rss_gib()}
    call = (lambda s, b: compiled(s, base, b)) if args.mode == "lora" else compiled  # noqa: E731
    state, m, first, times, cpu_times, _ = time_steps(call, state, batches, lambda msg: _log(f"{args.mode}: {msg}"))
    return {**row, "ran": True, "first_step_s": first, "step_times_s": times,
            "step_time_s": statistics.median(times) if times else None, "cpu_seconds_per_step": cpu_times,
            "final_loss": float(m["loss"]),
            "peak_rss_gib": _peak_rss_gib(), "load_average_at_end": list(os.getloadavg())}


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _child(argv: list[str]) -> dict:
    cmd = [sys.executable, "-m", "bench.lora_step", "--child", *argv]
    out = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(out.stderr[-4000:])
    if out.returncode != 0:
        return {"error": f"exit status {out.returncode}", "stderr_tail": out.stderr[-1500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="rsunivlm-1b")
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=2, help="timed steps after the compiling one")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--remat", default="dots", choices=("none", "full", "dots"))
    p.add_argument("--lora_rows", default="float32/float32,bfloat16/float32,bfloat16/bfloat16",
                   help="LoRA rows as base dtype/compute dtype (bfloat16/bfloat16 is configs/lora_finetune.py)")
    p.add_argument("--out", default="", help="result JSON (default bench/results/lora_step_<preset>.json)")
    p.add_argument("--full", default="auto", choices=("auto", "run", "compile", "skip"),
                   help="full fine-tuning row: run it (auto: when its AdamW state fits in memory), only compile "
                        "it (XLA's memory analysis), or leave it out")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="lora", choices=("lora", "full"), help=argparse.SUPPRESS)
    p.add_argument("--base_dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--compute_dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--compile_only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)), flush=True)
        return {}

    import rsunivlm_jax as rs
    n = rs.param_count(rs.presets.get(args.preset))
    common = ["--preset", args.preset, "--seq_len", str(args.seq_len), "--steps", str(args.steps),
              "--rank", str(args.rank), "--remat", args.remat]
    rows = []
    for spec in filter(None, args.lora_rows.split(",")):
        base_dtype, _, compute_dtype = spec.partition("/")
        rows.append(_child(common + ["--mode", "lora", "--base_dtype", base_dtype,
                                     "--compute_dtype", compute_dtype or "float32"]))
    full_state = 4 * 4 * n  # float32 parameters, gradients, Adam mu and nu
    mem = _mem_total_bytes()
    fits = full_state < mem
    if args.full == "run" or (args.full == "auto" and fits):
        rows.append(_child(common + ["--mode", "full", "--base_dtype", "float32"]))
    elif args.full != "skip":
        row = _child(common + ["--mode", "full", "--base_dtype", "float32", "--compile_only"])
        row.update(fits=fits, note=f"AdamW state (parameters, gradients, 2 moments in float32) = "
                                   f"{full_state / 1e9:.1f} GB, {mem / 1e9:.1f} GB of memory: compiled, not run")
        rows.append(row)
    from bench.common import machine_info, save_result
    result = {"preset": args.preset, "batch": 1, "num_images": 1, "decoder_positions": args.seq_len,
              "full_compute_dtype": "float32", "remat": args.remat, "lora_targets": list(TARGETS), "params": n,
              "full_adamw_state_gb": full_state / 1e9, "memory_total_gb": mem / 1e9, "rows": rows,
              "machine": {**machine_info(), "cpu_model": _cpu_model()},
              "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
              "load_average_at_end": list(os.getloadavg())}
    save_result(result, args.out or f"bench/results/lora_step_{args.preset}.json")
    return result


if __name__ == "__main__":
    main()
