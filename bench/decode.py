"""Decode throughput of rsunivlm-1b (random weights, float32, CPU): our jitted KV-cache loop vs
transformers `generate` on a Qwen2 decoder of the same size, plus the memory-bandwidth bound.

    .venv/bin/python -m bench.decode [--batches 1 8] [--new-tokens 64] [--reps 2] [--dtype float32|bfloat16]

Decode tokens/s = batch * (new_tokens - 1) / (t(new_tokens) - t(1)): the difference removes the
prefill and the first token, so only the per-token loop is measured (both frameworks the same way).
The four calls (JAX and transformers, 1 and new_tokens tokens) are timed in alternating rounds
after a warm-up call each (`bench.common.time_alternating`); medians.
Both get the same random text prompt (no image; image positions only lengthen the KV cache).
The bound: a decode step reads every active weight once (attention, one G-MoE expert, norms,
lm_head; one embedding row) plus the batch's KV cache; tokens/s <= batch * bandwidth / bytes per
step, with the read bandwidth measured here (best of numpy, XLA and torch sums over 1 GiB). At
larger batches the compute roofline (2 FLOPs per active weight per token at the measured float32
GEMM peak) is reported too. Timings on a shared machine vary; the load average is recorded.
bfloat16: weights and compute in bfloat16 on both sides (2 bytes per weight in the bound).
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import rsunivlm_jax as rs
from bench.common import (best_time, dtype_suffix, machine_info, peak_matmul_flops, time_alternating,
                          write_result)
from rsunivlm_jax.inference.generate import generate


def read_bandwidth(nbytes: int = 1 << 30, reps: int = 5) -> dict:
    """Read bandwidth (bytes/s) of a float32 sum over `nbytes`: numpy (1 thread), XLA, torch."""
    x = np.ones(nbytes // 4, np.float32)

    def best(fn):
        return nbytes / best_time(fn, reps)

    out = {"numpy": best(lambda: x.sum())}
    xj = jnp.asarray(x)
    total = jax.jit(jnp.sum)
    out["xla"] = best(lambda: total(xj).block_until_ready())
    del xj
    try:
        import torch
        xt = torch.from_numpy(x)
        out["torch"] = best(lambda: xt.sum())
    except ImportError:
        pass
    out["best"] = max(out.values())
    return out


def step_bytes(cfg, batch: int, cache_len: int, bytes_per: int = 4) -> dict:
    """Bytes a decode step must read: active weights (once per step) and the KV cache (per row)."""
    d = cfg.decoder
    hd, kv = d.head_dim, d.num_key_value_heads
    attn = d.hidden_size * (d.num_attention_heads * hd) * 2 + d.hidden_size * kv * hd * 2 \
        + d.num_attention_heads * hd + 2 * kv * hd  # q, o, k, v kernels + biases
    layer = attn + 3 * d.hidden_size * d.intermediate_size + 2 * d.hidden_size  # one expert + 2 norms
    weights = d.num_hidden_layers * layer + d.hidden_size * (d.vocab_size + 2)  # lm_head, final norm, 1 row
    kv_cache = 2 * d.num_hidden_layers * cache_len * kv * hd
    return {"weights": weights * bytes_per, "kv_cache_per_row": kv_cache * bytes_per,
            "total": (weights + batch * kv_cache) * bytes_per}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="rsunivlm-1b")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = p.parse_args(argv)
    load_start = os.getloadavg()  # other jobs on a shared machine skew timings; recorded with the result
    cfg = rs.presets.get(args.preset).replace(param_dtype=args.dtype, dtype=args.dtype)
    bytes_per = 4 if args.dtype == "float32" else 2
    d = cfg.decoder
    n = args.new_tokens
    print(f"init {args.preset} (random, {args.dtype}) ...", flush=True)
    t0 = time.perf_counter()
    graphdef, params = rs.init(cfg, 0)
    jax.block_until_ready(params)
    print(f"  {time.perf_counter() - t0:.1f}s", flush=True)
    bw = read_bandwidth()
    peak = peak_matmul_flops(dtype=args.dtype)
    print(f"{args.dtype} GEMM peak: {peak['peak_flops'] / 1e9:.0f} GFLOP/s", flush=True)
    print(f"read bandwidth: {bw['best'] / 1e9:.1f} GB/s ({ {k: round(v / 1e9, 1) for k, v in bw.items()} })",
          flush=True)

    hf = None
    if not args.skip_torch:
        import torch
        import transformers
        torch.set_num_threads(os.cpu_count() or 2)
        torch.manual_seed(0)
        hf_cfg = transformers.Qwen2Config(
            vocab_size=d.vocab_size, hidden_size=d.hidden_size, intermediate_size=d.intermediate_size,
            num_hidden_layers=d.num_hidden_layers, num_attention_heads=d.num_attention_heads,
            num_key_value_heads=d.num_key_value_heads, rms_norm_eps=d.rms_norm_eps, rope_theta=d.rope_theta,
            max_position_embeddings=d.max_position_embeddings, tie_word_embeddings=d.tie_word_embeddings,
            use_sliding_window=False, pad_token_id=0, eos_token_id=None, bos_token_id=None)
        hf = transformers.Qwen2ForCausalLM(hf_cfg).eval().to(getattr(torch, args.dtype))

    rng = np.random.default_rng(0)
    results = []
    for b in args.batches:
        ids = rng.integers(100, 150_000, (b, args.prompt_len)).astype(np.int32)
        gran = np.zeros((b,), np.int32)

        def run_jax(k):
            return generate(graphdef, params, ids, None, None, gran, max_new_tokens=k, eos_ids=(),
                            length_bucket=None, config=cfg)

        fns = {f"jax_{k}": (lambda k=k: run_jax(k)) for k in (1, n)}
        if hf is not None:
            import torch
            tids = torch.from_numpy(ids).long()

            def run_torch(k):
                with torch.inference_mode():
                    return hf.generate(input_ids=tids, attention_mask=torch.ones_like(tids), max_new_tokens=k,
                                       min_new_tokens=k, do_sample=False, pad_token_id=0, use_cache=True)

            fns.update({f"torch_{k}": (lambda k=k: run_torch(k)) for k in (1, n)})
        assert run_jax(n).lengths.min() == n
        # Warm-up (JAX: compilation) excluded, then rounds alternating all four calls; medians.
        timing = time_alternating(fns, reps=args.reps)
        row = {"batch": b}
        for side in ("jax", "torch") if hf is not None else ("jax",):
            t1, tn = timing[f"{side}_1"], timing[f"{side}_{n}"]
            row[side] = {"runs_s": {1: t1["runs_s"], n: tn["runs_s"]},
                         "decode_tok_s": b * (n - 1) / (tn["median_s"] - t1["median_s"])}
        if hf is not None:
            row["speedup_jax_over_torch"] = row["jax"]["decode_tok_s"] / row["torch"]["decode_tok_s"]
        jax_tps = row["jax"]["decode_tok_s"]
        sb = step_bytes(cfg, b, args.prompt_len + n, bytes_per)
        row["bytes_per_step"] = sb
        row["bound_tok_s"] = b * bw["best"] / sb["total"]
        # Compute roofline: 2 FLOPs per active weight per token at the measured GEMM peak.
        row["compute_bound_tok_s"] = peak["peak_flops"] / (2 * sb["weights"] / bytes_per)
        row["jax_fraction_of_bound"] = jax_tps / row["bound_tok_s"]
        if "torch" in row:
            row["torch_fraction_of_bound"] = row["torch"]["decode_tok_s"] / row["bound_tok_s"]
        print(f"batch {b}: jax {jax_tps:.2f} tok/s"
              + (f", torch {row['torch']['decode_tok_s']:.2f} tok/s" if "torch" in row else "")
              + f", bandwidth bound {row['bound_tok_s']:.2f} tok/s, compute bound "
              f"{row['compute_bound_tok_s']:.2f} tok/s", flush=True)
        results.append(row)
    load_end = os.getloadavg()
    result = {"bench": "decode", "preset": args.preset, "dtype": args.dtype, "new_tokens": n, "matmul": peak,
              "load_average_start_end": [load_start, load_end],
              "prompt_len": args.prompt_len, "bandwidth_bytes_s": bw, "results": results, "machine": machine_info()}
    write_result(f"decode_{args.preset}{dtype_suffix(args.dtype)}", result)


if __name__ == "__main__":
    main()
