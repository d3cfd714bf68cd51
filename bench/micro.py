"""Micro-benchmarks behind the changes in docs/profiling.md (CPU, one process, best of N).

    .venv/bin/python -m bench.micro gemv        # decode-step GEMVs: kernel layout [in, out] vs [out, in], vs torch
    .venv/bin/python -m bench.micro optimizer   # clip + AdamW: optax's clip vs ours (scalar multiply)
    .venv/bin/python -m bench.micro gemm        # float32 and bfloat16 GEMM rates, XLA vs torch
    .venv/bin/python -m bench.micro mlp_train   # one SwiGLU MLP fwd + bwd: gate/up as two GEMMs vs one, vs torch
    .venv/bin/python -m bench.micro remat       # jax.checkpoint policies on a cut llava-onevision-0.5b gradient
    .venv/bin/python -m bench.micro fuse_prefill  # dense prefill with gate+up as one GEMM vs two

Each prints one JSON line per measurement and writes `bench/results/micro_<what>.json`.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import best_time, machine_info, write_result


def gemv(args) -> list[dict]:
    """Qwen2-0.5B decode MLPs (24 layers x gate/up/down, 896 x 4864) for `steps` one-row steps in
    a `fori_loop`, as a decode step streams them: GB/s of weights read, per kernel layout; torch
    `F.linear` (weights `[out, in]`) on the same loop."""
    import torch
    d, f, layers, steps = 896, 4864, 24, args.steps
    rng = np.random.default_rng(0)
    out_in = [tuple((rng.random(s, np.float32) * 0.01) for s in ((f, d), (f, d), (d, f))) for _ in range(layers)]
    nbytes = 3 * d * f * 4 * layers * steps
    layouts = {"[in, out] (as trained)": ("bi,io->bo", [tuple(jnp.asarray(w.T.copy()) for w in l) for l in out_in]),
               "[out, in] (decode copy)": ("bi,oi->bo", [tuple(jnp.asarray(w) for w in l) for l in out_in])}
    # gate and up stacked into one [2F, D] kernel: one GEMV instead of two
    layouts["[out, in], gate+up stacked"] = ("bi,oi->bo", [(jnp.asarray(np.concatenate([g, u])), None, jnp.asarray(dn))
                                                           for g, u, dn in out_in])
    rows = []
    for name, (spec, ws) in layouts.items():
        def run(ws, x, spec=spec):
            def body(_, x):
                for g, u, dn in ws:
                    if u is None:
                        gu = jnp.einsum(spec, x, g)
                        h = jax.nn.silu(gu[:, :f]) * gu[:, f:]
                    else:
                        h = jax.nn.silu(jnp.einsum(spec, x, g)) * jnp.einsum(spec, x, u)
                    x = x + jnp.einsum(spec, h, dn)
                return x * 0.5
            return jax.lax.fori_loop(0, steps, body, x)
        fn = jax.jit(run)
        x = jnp.ones((1, d), jnp.float32)
        t = best_time(lambda: fn(ws, x).block_until_ready(), args.reps)
        rows.append({"impl": f"jax, kernel {name}", "gb_s": nbytes / t / 1e9, "ms_per_step": t / steps * 1e3})
    torch.set_num_threads(2)
    tw = [tuple(torch.from_numpy(w.copy()) for w in l) for l in out_in]
    lin = torch.nn.functional.linear

    def run_torch():
        x = torch.ones(1, d)
        with torch.inference_mode():
            for _ in range(steps):
                for g, u, dn in tw:
                    x = x + lin(torch.nn.functional.silu(lin(x, g)) * lin(x, u), dn)
                x = x * 0.5
        return x
    t = best_time(run_torch, args.reps)
    rows.append({"impl": "torch F.linear, weight [out, in]", "gb_s": nbytes / t / 1e9, "ms_per_step": t / steps * 1e3})
    return rows


def optimizer(args) -> list[dict]:
    """One clip + AdamW update over the largest kernels of rsunivlm-1b (0.71 B float32 parameters),
    parameters and moments donated: optax's `clip_by_global_norm` vs ours (`train.optim`)."""
    import optax
    from rsunivlm_jax.train import optim
    shapes = [(24, 896, 4864)] * 3 + [(151936, 896), (26, 1152, 4304), (26, 4304, 1152)]
    params = {f"p{i}": jnp.full(s, 0.01, jnp.float32) for i, s in enumerate(shapes)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
    n = sum(int(np.prod(s)) for s in shapes)
    rows = []
    for name, clip in (("optax.clip_by_global_norm", optax.clip_by_global_norm(1.0)),
                       ("rsunivlm_jax.train.optim.clip_by_global_norm", optim.clip_by_global_norm(1.0))):
        tx = optax.chain(clip, optax.adamw(1e-4, weight_decay=0.01))

        def step(p, s, g, tx=tx):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s
        fn = jax.jit(step, donate_argnums=(0, 1))
        p, s = jax.tree.map(jnp.copy, params), tx.init(params)
        p, s = fn(p, s, grads)  # compile
        ts = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            p, s = fn(p, s, grads)
            jax.block_until_ready(p)
            ts.append(time.perf_counter() - t0)
        # Minimum traffic: read grad, param, mu, nu; write param, mu, nu (float32).
        rows.append({"impl": name, "params": n, "best_s": min(ts), "median_s": float(np.median(ts)),
                     "gb_s_at_7_passes": 7 * 4 * n / min(ts) / 1e9})
        del p, s
    return rows


def gemm(args) -> list[dict]:
    """n x n GEMMs in float32 and bfloat16, XLA vs torch (GFLOP/s)."""
    import torch
    rows = []
    for n in (2048, 4096):
        for dt in ("float32", "bfloat16"):
            a = jnp.ones((n, n), dt)
            fn = jax.jit(lambda a: a @ a)
            tj = best_time(lambda: fn(a).block_until_ready(), args.reps)
            ta_ = torch.ones(n, n, dtype=getattr(torch, dt))
            tt = best_time(lambda: ta_ @ ta_, args.reps)
            rows.append({"n": n, "dtype": dt, "xla_gflops": 2 * n ** 3 / tj / 1e9,
                         "torch_gflops": 2 * n ** 3 / tt / 1e9})
    return rows


def mlp_train(args) -> list[dict]:
    """One decoder SwiGLU MLP (Qwen2-0.5B widths, 1,024 tokens), forward + backward (gradients of
    the input and the three kernels), under the `dots` remat policy as in training: gate and up as
    two GEMMs (as the model runs them) vs one GEMM over the two kernels concatenated inside the
    jitted function (fused at compute time), and torch autograd on the same shapes. Variants are
    timed alternately, `--reps` rounds; best and median per variant."""
    import statistics

    import torch
    d, f, t = 896, 4864, 1024
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, t, d), np.float32))
    ct = jnp.asarray(rng.standard_normal((1, t, d), np.float32))
    w = {k: jnp.asarray(rng.standard_normal(s, np.float32) * 0.02) for k, s in
         (("gate", (d, f)), ("up", (d, f)), ("down", (f, d)))}

    def separate(w, x):
        h = jax.nn.silu(jnp.einsum("bti,io->bto", x, w["gate"])) * jnp.einsum("bti,io->bto", x, w["up"])
        return jnp.einsum("bti,io->bto", h, w["down"])

    def fused(w, x):
        gu = jnp.einsum("bti,io->bto", x, jnp.concatenate([w["gate"], w["up"]], axis=-1))
        h = jax.nn.silu(gu[..., :f]) * gu[..., f:]
        return jnp.einsum("bti,io->bto", h, w["down"])

    policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable

    def make(fn):
        loss = lambda w, x: jnp.sum(jax.checkpoint(fn, policy=policy)(w, x) * ct)  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    fns = {"gate, up: two GEMMs": make(separate), "gate+up: one GEMM (kernels concatenated in the step)": make(fused)}
    ref = jax.tree.map(np.asarray, fns["gate, up: two GEMMs"](w, x))
    other = jax.tree.map(np.asarray, fns["gate+up: one GEMM (kernels concatenated in the step)"](w, x))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(other)))
    torch.set_num_threads(2)
    tw = {k: torch.from_numpy(np.asarray(v).T.copy()).requires_grad_() for k, v in w.items()}
    tx = torch.from_numpy(np.asarray(x)).requires_grad_()
    tct = torch.from_numpy(np.asarray(ct))
    lin = torch.nn.functional.linear

    def run_torch():
        for p in list(tw.values()) + [tx]:
            p.grad = None
        y = lin(torch.nn.functional.silu(lin(tx, tw["gate"])) * lin(tx, tw["up"]), tw["down"])
        (y * tct).sum().backward()

    calls = {k: (lambda fn=fn: jax.block_until_ready(fn(w, x))) for k, fn in fns.items()}
    calls["torch autograd"] = run_torch
    times = {k: [] for k in calls}
    for c in calls.values():
        c()
    for _ in range(args.reps):
        for k, c in calls.items():
            t0 = time.perf_counter()
            c()
            times[k].append(time.perf_counter() - t0)
    flops = 3 * 2 * t * 3 * d * f  # forward + 2x backward of three GEMMs
    return [{"impl": k, "best_ms": min(v) * 1e3, "median_ms": statistics.median(v) * 1e3,
             "gflops_best": flops / min(v) / 1e9, "max_abs_grad_diff_vs_two_gemms": diff if "one GEMM" in k else 0.0}
            for k, v in times.items()]


REMAT_POLICIES = {
    "full (nothing_saveable)": "nothing_saveable",
    "dots (dots_with_no_batch_dims_saveable)": "dots_with_no_batch_dims_saveable",
    "dots_all (dots_saveable: attention logits and outputs too)": "dots_saveable",
    "none (everything_saveable)": "everything_saveable",
}


def remat(args) -> list[dict]:
    """Loss gradient of llava-onevision-0.5b cut to `--layers` decoder and vision blocks (1,024
    positions, one image; the full embedding table and LM head) under each `jax.checkpoint`
    policy of the scanned layers, timed alternately in one process; XLA's temporary bytes of each
    compiled gradient. Each policy is measured under the config name "dots" by pointing
    `rsunivlm_jax.layers.scan.REMAT["dots"]` at it while its function is traced."""
    import statistics

    import rsunivlm_jax as rs
    from bench.train_step import leafwise_init
    from rsunivlm_jax.layers import scan as scan_lib
    from rsunivlm_jax.train import data as data_lib, step as step_lib

    cfg = rs.presets.get("llava-onevision-0.5b").replace(
        remat_policy="dots", decoder={"num_hidden_layers": args.layers},
        vision={"num_hidden_layers": args.layers, "num_layers_used": args.layers})
    text_len = 1024 - (cfg.tokens_per_image - 1)
    graphdef, params = leafwise_init(cfg)
    batch = {k: jnp.asarray(v) for k, v in data_lib.RandomBatches(
        cfg, global_batch=1, text_len=text_len, num_images=1, process_index=0, process_count=1).batch(0).items()}
    loss_fn = step_lib.make_loss_fn(graphdef, num_experts=1)
    saved = scan_lib.REMAT["dots"]
    fns, temp = {}, {}
    try:
        for name, policy in REMAT_POLICIES.items():
            scan_lib.REMAT["dots"] = getattr(jax.checkpoint_policies, policy)
            fn = jax.jit(jax.grad(lambda p, b: loss_fn(p, b).loss_sum))
            compiled = fn.lower(params, batch).compile()
            temp[name] = compiled.memory_analysis().temp_size_in_bytes / 2 ** 30
            fns[name] = compiled
    finally:
        scan_lib.REMAT["dots"] = saved
    times = {k: [] for k in fns}
    for fn in fns.values():
        jax.block_until_ready(fn(params, batch))
    for _ in range(args.reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, batch))
            times[k].append(time.perf_counter() - t0)
    return [{"policy": k, "best_s": min(v), "median_s": statistics.median(v), "runs_s": v,
             "xla_temp_gib": temp[k], "layers": args.layers} for k, v in times.items()]


def fuse_prefill(args) -> list[dict]:
    """Prefill of the dense llava-onevision-0.5b (one expert, so `GMoEMLP.fuse_gate_up` applies;
    rsunivlm-1b's 3-expert prefill routes and is unaffected): 1 image + 50 text tokens, logits at
    every position, gate/up as one GEMM vs two, compiled separately and timed alternately."""
    import statistics

    import rsunivlm_jax as rs
    from rsunivlm_jax.functional import merge
    from rsunivlm_jax.layers import mlp

    cfg = rs.presets.get("llava-onevision-0.5b")
    graphdef, params = rs.init(cfg, 0)
    rng = np.random.default_rng(0)
    ids = jnp.asarray([[cfg.image_token_id] + rng.integers(1000, 100000, 50).tolist()], jnp.int32)
    s = cfg.vision.image_size
    px = jnp.asarray(rng.uniform(-1, 1, (1, 1, s, s, 3)).astype(np.float32))
    g = jnp.zeros(1, jnp.int32)
    saved = mlp.GMoEMLP.fuse_gate_up
    fns = {}
    try:
        for name, fuse in (("gate, up: two GEMMs", False), ("gate+up: one GEMM", True)):
            mlp.GMoEMLP.fuse_gate_up = fuse
            fns[name] = jax.jit(lambda p, i, x, g: merge(graphdef, p)(i, x, g)).lower(params, ids, px, g).compile()
    finally:
        mlp.GMoEMLP.fuse_gate_up = saved
    outs = [np.asarray(fn(params, ids, px, g)) for fn in fns.values()]
    diff = float(np.max(np.abs(outs[0] - outs[1])))
    times = {k: [] for k in fns}
    for _ in range(args.reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, ids, px, g))
            times[k].append(time.perf_counter() - t0)
    return [{"impl": k, "best_s": min(v), "median_s": statistics.median(v), "runs_s": v,
             "max_abs_logit_diff": diff} for k, v in times.items()]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("gemv", "optimizer", "gemm", "mlp_train", "remat", "fuse_prefill"))
    p.add_argument("--layers", type=int, default=2, help="remat: decoder and vision blocks")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=16, help="gemv: decode steps per timed call")
    args = p.parse_args(argv)
    rows = {"gemv": gemv, "optimizer": optimizer, "gemm": gemm, "mlp_train": mlp_train, "remat": remat,
            "fuse_prefill": fuse_prefill}[args.what](args)
    for r in rows:
        print(json.dumps(r), flush=True)
    result = {"bench": f"micro_{args.what}", "rows": rows, "machine": machine_info()}
    write_result(f"micro_{args.what}", result)
    return result


if __name__ == "__main__":
    main()
