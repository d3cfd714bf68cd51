"""One prepared GPU benchmark: bf16 LoRA and full train steps, prefill latency and decode tokens/s.

    bash bench/gpu.sh                 # one H100/H200: rsunivlm-1b, < 5 minutes, writes gpu.json
    bash bench/gpu.sh --reduced       # CPU smoke mode (CI): tiny preset, 2 steps, few tokens

Runs from the repository root with `PYTHONPATH=.` and synthetic inputs; imports only the model,
train-step and generation modules (no Grain / TFDS / ml-collections, which the GPU machine lacks).

* Train step: `rsunivlm_jax.train.step.make_train_step` with AdamW, float32 master parameters,
  bfloat16 compute, remat `--remat`, global batch `--batch` x (one 384x384 image + text) =
  `--seq` decoder positions, grouped G-MoE dispatch. MFU = model FLOPs
  (`train.metrics.flops_per_step`: vision tower included, one expert per token, causal
  attention) / (step time x peak). Peak: 989.4e12 bf16 dense for H100/H200 (the vendor's dense bf16 figure).
* LoRA step (first, so the device's `peak_bytes_in_use` is its own): `rsunivlm_jax.lora.step` as
  configs/lora_finetune.py runs it: bfloat16 frozen base, rank-16 adapters on attention, experts
  and connector, AdamW; same batch, positions and remat as the train step.
* Prefill latency: generation of 1 token for one image + 50 text tokens, batch 1.
* Decode: `rsunivlm_jax.generate` with bfloat16 weights, greedy, 64 (`--new`) new tokens at
  batch 1 and 32; tokens/s = batch x new / (time(new) - time(1 token)).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import rsunivlm_jax as rs
from rsunivlm_jax.inference.generate import generate
from rsunivlm_jax.train import metrics as metrics_lib
from rsunivlm_jax.train import optim, step as step_lib

PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return out


def peak_for(device) -> float | None:
    kind = getattr(device, "device_kind", "")
    return next((v for k, v in PEAK_BF16.items() if k in kind), None)


def synthetic_batch(cfg, batch: int, text_len: int, mixed: bool = False) -> dict:
    """One image + `text_len` text ids per row; granularity 1 (homogeneous) or cycling 0, 1, 2."""
    rng = np.random.default_rng(0)
    ids = rng.integers(2, min(1000, cfg.decoder.vocab_size - 2), (batch, text_len)).astype(np.int32)
    ids[:, 14] = cfg.image_token_id
    s = cfg.vision.image_size
    b = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones(ids.shape, np.float32),
         "pixel_values": rng.uniform(-1, 1, (batch, 1, s, s, 3)).astype(np.float32),
         "num_images": np.ones((batch,), np.int32),
         "granularity": (np.arange(batch) % 3 if mixed else np.ones((batch,))).astype(np.int32)}
    return jax.device_put(b)


def run_steps(step, state, steps: int) -> tuple[float, list[float], dict]:
    """(first call's seconds, compile included; `steps` further calls' seconds; last metrics) of
    `state, metrics = step(state)`."""
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        state, m = step(state)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    return times[0], times[1:], m


def train_bench(cfg, batch: int, seq: int, steps: int, mixed: bool = False) -> dict:
    """One train step timed. Homogeneous (every row expert 1): the trainer's one-expert step for
    batches grouped by granularity. `mixed` (rows cycle experts 0, 1, 2): the exact full step."""
    text_len = seq - (cfg.tokens_per_image - 1)
    graphdef, params = rs.init(cfg, 0)
    opt = optim.make_optimizer(optim.OptimSpec(total_steps=1000, lr=1e-5, warmup_steps=10), params)
    state = step_lib.init_state(params, opt)
    fn = jax.jit(step_lib.make_train_step(graphdef, opt, num_experts=cfg.gmoe.num_experts, model_config=cfg,
                                          homogeneous_batches=not mixed), donate_argnums=(0,))
    b = synthetic_batch(cfg, batch, text_len, mixed)
    compile_s, times, m = run_steps(lambda st: fn(st, b), state, steps)
    step_s = statistics.median(times)
    flops = metrics_lib.flops_per_step(cfg, batch, text_len, 1)
    peak = peak_for(jax.devices()[0])
    return {"batch": batch, "positions_per_example": seq, "text_len": text_len, "remat": cfg.remat_policy,
            "compile_s": compile_s, "step_s": step_s, "steps_s": times, "model_flops_per_step": flops,
            "tokens_per_s": batch * seq / step_s, "loss": float(m["loss"]),
            "mfu": None if peak is None else flops / step_s / peak, "peak_flops": peak}


def lora_bench(cfg, batch: int, seq: int, steps: int, rank: int = 16) -> dict:
    """The LoRA step (`rsunivlm_jax.lora.step`, as configs/lora_finetune.py): bfloat16 frozen base
    passed per call, rank-16 float32 adapters on attention, experts and connector, AdamW. Run first
    in the process, so the device's peak memory is this step's."""
    from rsunivlm_jax.lora import adapters as adapters_lib, step as lora_step
    from rsunivlm_jax.lora.config import LoraConfig
    from rsunivlm_jax.lora.train import expert_axes
    cfg = cfg.replace(param_dtype="bfloat16")
    text_len = seq - (cfg.tokens_per_image - 1)
    lora = LoraConfig(rank=rank, alpha=2.0 * rank, targets=("attention", "experts", "connector"))
    _, base = rs.init(cfg, 0)
    adapters = adapters_lib.init(cfg, lora, 0)
    opt = optim.make_optimizer(optim.OptimSpec(total_steps=1000, lr=2e-4, weight_decay=0.0), adapters)
    state = step_lib.init_state(adapters, opt)
    b = synthetic_batch(cfg, batch, text_len)
    fn = jax.jit(lora_step.make_train_step(adapters_lib.graphdef(cfg, lora), opt, num_experts=cfg.gmoe.num_experts,
                                           expert_axes=expert_axes(cfg, lora)), donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = fn.lower(state, base, b).compile()
    compile_s = time.perf_counter() - t0
    first_s, times, m = run_steps(lambda st: compiled(st, base, b), state, steps)
    mem = compiled.memory_analysis()
    stats = jax.devices()[0].memory_stats() or {}
    return {"batch": batch, "positions_per_example": seq, "rank": rank, "base_dtype": "bfloat16",
            "remat": cfg.remat_policy, "compile_s": compile_s, "first_step_s": first_s,
            "step_s": statistics.median(times), "steps_s": times,
            "loss": float(m["loss"]), "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
            "xla_temp_bytes": None if mem is None else mem.temp_size_in_bytes,
            "xla_argument_bytes": None if mem is None else mem.argument_size_in_bytes}


def decode_bench(cfg, batches: list[int], new: int, reps: int) -> dict:
    cfg = cfg.replace(param_dtype="bfloat16", dtype="bfloat16")
    graphdef, params = rs.init(cfg, 0)
    never = [-1]  # no token id matches: every row decodes exactly `new` tokens
    s = cfg.vision.image_size
    out = {}
    rng = np.random.default_rng(1)
    for b in batches:
        ids = rng.integers(2, min(1000, cfg.decoder.vocab_size - 2), (b, 51)).astype(np.int32)
        ids[:, 0] = cfg.image_token_id
        px = rng.uniform(-1, 1, (b, 1, s, s, 3)).astype(np.float32)

        def run(n):
            return generate(graphdef, params, ids, None, px, np.zeros(b, np.int32), max_new_tokens=n,
                            eos_ids=never, config=cfg).tokens

        run(1), run(new)  # compile both buckets
        t1 = statistics.median(timed(lambda: run(1), reps))
        tn = statistics.median(timed(lambda: run(new), reps))
        out[f"batch_{b}"] = {"prefill_s": t1, "generate_s": tn, "new_tokens": new,
                             "decode_tokens_per_s": b * (new - 1) / max(tn - t1, 1e-9)}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reduced", action="store_true", help="tiny preset on CPU (CI smoke mode)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--remat", default="full", choices=("none", "full", "dots"))
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--out", default=os.path.join("bench", "results", "gpu.json"), help="result file")
    args = p.parse_args(argv)
    if args.reduced:
        cfg = rs.presets.get("tiny")
        args.batch, args.seq, args.steps, args.new, batches, reps = 2, 96, 2, 8, [1, 2], 1
    else:
        cfg = rs.presets.get("rsunivlm-1b")
        batches, reps = [1, 32], 3
    cfg = cfg.replace(dtype="bfloat16", remat_policy=args.remat)
    result = {"device": str(jax.devices()[0]), "device_kind": jax.devices()[0].device_kind,
              "jax": jax.__version__, "preset": "tiny" if args.reduced else "rsunivlm-1b"}
    t0 = time.perf_counter()
    log("LoRA step ...")
    result["lora"] = lora_bench(cfg, args.batch, args.seq, args.steps)
    log(f"lora: {json.dumps(result['lora'])[:300]}")
    log("train step ...")
    result["train"] = train_bench(cfg, args.batch, args.seq, args.steps)
    log(f"train: {json.dumps(result['train'])[:300]}")
    log("train step, mixed-expert batch (exact routing) ...")
    result["train_mixed"] = train_bench(cfg, args.batch, args.seq, args.steps, mixed=True)
    result["train_mixed"]["vs_homogeneous"] = result["train_mixed"]["step_s"] / result["train"]["step_s"]
    log(f"train mixed: {result['train_mixed']['step_s']:.3f} s "
        f"({result['train_mixed']['vs_homogeneous']:.2f}x the homogeneous step; goal <= 1.15x)")
    log("prefill + decode ...")
    result["decode"] = decode_bench(cfg, batches, args.new, reps)
    result["wall_s"] = time.perf_counter() - t0
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
