"""Prefill forward of the full-size model, float32 CPU, JAX vs transformers in one process.

    .venv/bin/python -m bench.forward [--preset rsunivlm-1b] [--text 50] [--images 1] [--reps 5]
                                      [--dtype float32|bfloat16]

JAX: our `forward` (G-MoE, grouped dispatch = one expert). transformers:
`LlavaOnevisionForConditionalGeneration` with the same dimensions (dense MLP, i.e. the same
FLOPs), eager attention, fed the RSUniVLM base-view layout (729 + 1 positions per image).
Both compute logits at every position. bfloat16: parameters and compute in bfloat16 on both sides
(transformers: `.to(torch.bfloat16)`), MFU against the bfloat16 GEMM peak of the same run.
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import rsunivlm_jax as rs
from bench.common import dtype_suffix, machine_info, peak_matmul_flops, time_alternating, write_result


def torch_model(cfg):
    import torch
    import transformers
    d, v = cfg.decoder, cfg.vision
    text = transformers.Qwen2Config(
        vocab_size=d.vocab_size, hidden_size=d.hidden_size, intermediate_size=d.intermediate_size,
        num_hidden_layers=d.num_hidden_layers, num_attention_heads=d.num_attention_heads,
        num_key_value_heads=d.num_key_value_heads, rms_norm_eps=d.rms_norm_eps, rope_theta=d.rope_theta,
        tie_word_embeddings=True)
    vision = transformers.SiglipVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers_used,
        num_attention_heads=v.num_attention_heads, image_size=v.image_size, patch_size=v.patch_size,
        layer_norm_eps=v.layer_norm_eps, vision_use_head=False)
    hf_cfg = transformers.LlavaOnevisionConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_index=cfg.image_token_id,
        video_token_index=cfg.image_token_id + 1, vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_grid_pinpoints=[[v.image_size, v.image_size]], projector_hidden_act="gelu", tie_word_embeddings=True)
    hf_cfg.vision_config.vision_use_head = False
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return transformers.LlavaOnevisionForConditionalGeneration(hf_cfg).eval()


def prefill_flops(cfg, text_len: int, num_images: int) -> float:
    """Forward model FLOPs with logits at every position (what both sides compute): vision tower,
    connector and decoder as in `rsunivlm_jax.train.metrics.flops_per_example` (forward only),
    plus the LM head over all L positions."""
    from rsunivlm_jax.train.metrics import flops_per_example
    frozen = {"vision": False, "connector": False, "decoder": False}
    parts = flops_per_example(cfg, text_len, num_images, trained=frozen)
    positions = text_len + num_images * (cfg.tokens_per_image - 1)
    return parts["vision"] + parts["connector"] + parts["decoder"] + 2.0 * cfg.decoder.hidden_size * \
        cfg.decoder.vocab_size * positions


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="rsunivlm-1b")
    p.add_argument("--text", type=int, default=50)
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--name", default=None)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(os.cpu_count() or 2)

    cfg = rs.presets.get(args.preset).replace(param_dtype=args.dtype, dtype=args.dtype)
    s = cfg.vision.image_size
    print(f"init JAX {args.preset} ...", flush=True)
    graphdef, params = rs.init(cfg, 0)
    print("init transformers ...", flush=True)
    hf = torch_model(cfg).to(getattr(torch, args.dtype))
    rng = np.random.default_rng(0)
    text = rng.integers(1000, 100000, args.text).tolist()
    ids = [cfg.image_token_id] * args.images + text
    pixels = rng.uniform(-1, 1, (args.images, s, s, 3)).astype(np.float32)
    j_ids, j_px, g = jnp.asarray([ids], jnp.int32), jnp.asarray(pixels)[None], jnp.zeros(1, jnp.int32)
    hf_ids = torch.tensor([[cfg.image_token_id] * (cfg.tokens_per_image * args.images) + text])
    hf_px = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())[:, None].to(getattr(torch, args.dtype))
    sizes = torch.tensor([[s, s]] * args.images)

    def run_jax():
        return rs.forward(graphdef, params, j_ids, j_px, g).block_until_ready()

    def run_torch():
        with torch.inference_mode():
            return hf(input_ids=hf_ids, pixel_values=hf_px, image_sizes=sizes,
                      batch_num_images=torch.tensor([2 if args.images == 1 else args.images])).logits

    a, b = np.asarray(run_jax()), run_torch().float().numpy()
    print(f"logit shapes: jax {a.shape}, torch {tuple(b.shape)}")
    timing = time_alternating({"jax": run_jax, "torch": run_torch}, reps=args.reps)
    seq = len(ids) + args.images * (cfg.tokens_per_image - 1)
    result = {"bench": "forward", "preset": args.preset, "dtype": args.dtype, "images": args.images,
              "text_tokens": args.text,
              "sequence": seq, "flops": prefill_flops(cfg, len(ids), args.images), "timing": timing,
              "speedup_jax_over_torch": timing["torch"]["median_s"] / timing["jax"]["median_s"],
              "matmul": peak_matmul_flops(dtype=args.dtype), "machine": machine_info()}
    write_result(args.name or f"forward_{args.preset}_{args.images}img{dtype_suffix(args.dtype)}", result)


if __name__ == "__main__":
    main()
