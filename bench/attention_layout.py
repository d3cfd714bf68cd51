"""Attention core before/after the logits-layout change (docs/profiling.md), at the model's shapes.

    .venv/bin/python -m bench.attention_layout [--reps 12]

Times `rsunivlm_jax.layers.attention.dot_product_attention` (logits `[B, G, T, R, S]`, the order
the QK^T dot produces) against the previous formulation kept below (`[B, G, R, T, S]`, which
costs a transpose of the logits in the forward pass and of their gradient in the backward
pass), forward and forward + backward, alternating the two, float32 on CPU:

* decoder: 1,024 positions, 14 query heads in 2 KV groups of 7, head dim 64, causal mask
  (one layer of the training step);
* decoder prefill: 780 positions (1 image + 50 text tokens);
* vision: 729 patches, 16 heads, head dim 72, no mask.

Reports the minimum and the median over `--reps` of wall time and of this process's CPU time
(the minimum is the least disturbed by other jobs on a shared machine), checks that both give
the same values, and writes bench/results/attention_layout.json.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import machine_info, write_result
from rsunivlm_jax.layers import attention

SHAPES = {  # name: (T, H, G, K, causal)
    "decoder, 1024 positions (training)": (1024, 14, 2, 64, True),
    "decoder, 780 positions (prefill)": (780, 14, 2, 64, True),
    "vision, 729 patches": (729, 16, 16, 72, False),
}


def previous_dot_product_attention(q, k, v, mask, scale):
    """The formulation before the change: logits in `[B, G, R, T, S]` order."""
    b, t, h, kd = q.shape
    g = k.shape[2]
    q = q.reshape(b, t, g, h // g, kd)
    logits = jnp.einsum("btgrk,bsgk->bgrts", q, k).astype(jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :, :], logits, attention.NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bgrts,bsgk->btgrk", probs, v)
    return out.reshape(b, t, h, kd)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=12)
    args = p.parse_args(argv)
    impls = {"previous": previous_dot_product_attention, "current": attention.dot_product_attention}
    rng = np.random.default_rng(0)
    out = {}
    for name, (t, h, g, kd, causal) in SHAPES.items():
        q, do = (jnp.asarray(rng.normal(size=(1, t, h, kd)), jnp.float32) for _ in range(2))
        k, v = (jnp.asarray(rng.normal(size=(1, t, g, kd)), jnp.float32) for _ in range(2))
        mask = attention.causal_mask(jnp.ones((1, t), jnp.int32)) if causal else None
        fns = {}
        for impl, f in impls.items():
            fwd = jax.jit(lambda q, k, v, f=f: f(q, k, v, mask, kd ** -0.5))
            grad = jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v, mask, kd ** -0.5) * do), argnums=(0, 1, 2)))
            fns[impl] = {"forward": fwd, "forward+backward": grad}
        vals = {impl: (fns[impl]["forward"](q, k, v), fns[impl]["forward+backward"](q, k, v)) for impl in impls}
        diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(vals["previous"]),
                                                                  jax.tree.leaves(vals["current"])))
        runs = {impl: {kind: {"wall": [], "cpu": []} for kind in fns[impl]} for impl in impls}
        for _ in range(args.reps):
            for impl in impls:
                for kind, fn in fns[impl].items():
                    c0, t0 = time.process_time(), time.perf_counter()
                    jax.block_until_ready(fn(q, k, v))
                    runs[impl][kind]["wall"].append(time.perf_counter() - t0)
                    runs[impl][kind]["cpu"].append(time.process_time() - c0)
        summary = {impl: {kind: {f"{m}_{stat.__name__}_ms": 1e3 * stat(r[m]) for m in ("wall", "cpu")
                                 for stat in (min, statistics.median)} for kind, r in runs[impl].items()}
                   for impl in impls}
        out[name] = {"max_abs_difference": diff, "timing": summary, "runs_s": runs}
        for kind in ("forward", "forward+backward"):
            a, b = summary["previous"][kind]["wall_min_ms"], summary["current"][kind]["wall_min_ms"]
            print(f"{name:38s} {kind:17s} previous {a:7.1f} ms  current {b:7.1f} ms  ({b / a - 1:+.0%}), "
                  f"max |diff| {diff:.1e}", flush=True)
    result = {"bench": "attention_layout", "reps": args.reps, "shapes": out,
              "machine": machine_info()}
    write_result("attention_layout", result)
    return result


if __name__ == "__main__":
    main()
