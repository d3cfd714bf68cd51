"""SigLIP so400m vision tower (26 blocks, one 384x384 image), CPU, JAX vs transformers.

    .venv/bin/python -m bench.vision [--reps 5] [--batch 1] [--dtype float32|bfloat16]

bfloat16: parameters and compute in bfloat16 on both sides (ours: `param_dtype` and `dtype`;
transformers: the module and pixels cast with `.to(torch.bfloat16)`); MFU against the bfloat16
GEMM peak measured in the same run.
"""
from __future__ import annotations

import argparse
import os

import jax.numpy as jnp
import numpy as np

import rsunivlm_jax as rs
from bench.common import dtype_suffix, machine_info, peak_matmul_flops, time_alternating, write_result


def vision_flops(cfg, batch: int) -> float:
    """Forward FLOPs of the tower: matmuls (2 * params * tokens) + attention (4 * N^2 * D per layer)."""
    v = cfg.vision
    n, d, f = v.num_patches, v.hidden_size, v.intermediate_size
    per_layer = 2 * n * (4 * d * d + 2 * d * f) + 4 * n * n * d
    patch = 2 * n * (v.patch_size ** 2 * v.num_channels) * d
    return batch * (v.num_layers_used * per_layer + patch)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--preset", default="rsunivlm-1b")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = p.parse_args(argv)
    import torch
    import transformers
    torch.set_num_threads(os.cpu_count() or 2)
    cfg = rs.presets.get(args.preset).replace(param_dtype=args.dtype, dtype=args.dtype)
    v = cfg.vision
    # Only the tower: a decoder-less config keeps init cheap.
    small = cfg.replace(decoder={"vocab_size": 64, "num_hidden_layers": 1})
    graphdef, params = rs.init(small, 0)
    hf = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers_used,
        num_attention_heads=v.num_attention_heads, image_size=v.image_size, patch_size=v.patch_size,
        layer_norm_eps=v.layer_norm_eps, vision_use_head=False, attn_implementation="eager")).eval()
    hf = hf.to(getattr(torch, args.dtype))
    px = np.random.default_rng(0).uniform(-1, 1, (args.batch, v.image_size, v.image_size, 3)).astype(np.float32)
    jx = jnp.asarray(px)
    tx = torch.from_numpy(px.transpose(0, 3, 1, 2).copy()).to(getattr(torch, args.dtype))

    def run_jax():
        return rs.vision_features(graphdef, params, jx).block_until_ready()

    def run_torch():
        with torch.inference_mode():
            return hf(pixel_values=tx).last_hidden_state

    timing = time_alternating({"jax": run_jax, "torch": run_torch}, reps=args.reps)
    flops = vision_flops(cfg, args.batch)
    peak = peak_matmul_flops(dtype=args.dtype)
    result = {"bench": "vision_tower", "batch": args.batch, "dtype": args.dtype, "flops": flops, "timing": timing,
              "speedup_jax_over_torch": timing["torch"]["median_s"] / timing["jax"]["median_s"],
              "mfu_jax": flops / timing["jax"]["median_s"] / peak["peak_flops"],
              "mfu_torch": flops / timing["torch"]["median_s"] / peak["peak_flops"],
              "matmul": peak, "machine": machine_info()}
    write_result(f"vision_b{args.batch}{dtype_suffix(args.dtype)}", result)


if __name__ == "__main__":
    main()
