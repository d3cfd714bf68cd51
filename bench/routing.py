"""G-MoE routing cost: a homogeneous batch against a mixed one, per strategy (`rsunivlm_jax.routing`).

    python -m bench.routing [--layers 2] [--batch 4] [--seq 256] [--reps 3]

A text-only decoder of the `rsunivlm-1b` width (896 -> 4864 -> 896, 3 experts) with `--layers`
layers: prefill (forward) and a training gradient (forward + backward of the summed
log-likelihood), for batch granularities [0]*B (homogeneous) and [0, 1, 2, 0, ...] (mixed).
JAX only: the PyTorch reference has no mixed-batch path (one expert per forward). Prints a
markdown table of medians and the mixed / homogeneous ratios; writes bench/results/routing.json.
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import rsunivlm_jax as rs
from bench import common


def build(layers: int, strategy: str):
    cfg = rs.presets.get("rsunivlm-1b")
    return cfg.replace(decoder={"num_hidden_layers": layers, "vocab_size": 4096}, tokenizer_vocab_size=4096,
                       image_token_id=4095, pad_token_id=0, eos_token_ids=(1,), vision={"num_hidden_layers": 1,
                       "num_layers_used": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                       "image_size": 28}, gmoe_dispatch=strategy)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    b, t = args.batch, args.seq
    ids = jnp.asarray(np.random.default_rng(0).integers(2, 4000, (b, t)), jnp.int32)
    grans = {"homogeneous": jnp.zeros((b,), jnp.int32), "mixed": jnp.arange(b, dtype=jnp.int32) % 3}
    rows = []
    for strategy in ("auto", "dense_mask", "ragged", "gather"):
        cfg = build(args.layers, strategy)
        graphdef, params = rs.init(cfg, 0)
        fwd = jax.jit(lambda p, g: rs.forward(graphdef, p, ids, None, g, output="text"))
        grad = jax.jit(jax.grad(lambda p, g: -jnp.sum(jax.nn.log_softmax(
            rs.forward(graphdef, p, ids, None, g, output="text")[:, :-1]).max(-1))))
        fns = {f"{kind} {name}": (lambda f=f, g=g: jax.block_until_ready(f(params, g)))
               for kind, f in (("prefill", fwd), ("grad", grad)) for name, g in grans.items()}
        print(f"{strategy}:", flush=True)
        res = common.time_alternating(fns, reps=args.reps)
        for kind in ("prefill", "grad"):
            h, m = res[f"{kind} homogeneous"]["median_s"], res[f"{kind} mixed"]["median_s"]
            rows.append({"strategy": strategy, "step": kind, "homogeneous_s": h, "mixed_s": m, "ratio": m / h})
    load = os.getloadavg()[0]
    print(f"\nbackend {jax.default_backend()}, batch {b} x {t} tokens, {args.layers} layers, load {load:.1f}\n")
    print("| Strategy | Step | Homogeneous | Mixed | Mixed / homogeneous |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {r['step']} | {r['homogeneous_s']:.3f} s | {r['mixed_s']:.3f} s | "
              f"{r['ratio']:.2f}x |")
    common.save_result({"rows": rows, "args": vars(args), "load_avg": load, "backend": jax.default_backend(),
                        "machine": common.machine_info()}, os.path.join("bench", "results", "routing.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
