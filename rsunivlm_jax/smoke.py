"""A small real job: build a model, encode a generated image, print shapes, counts and timings.

    python -m rsunivlm_jax.smoke [--preset tiny]
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import rsunivlm_jax as rs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny", choices=rs.presets.names())
    args = parser.parse_args(argv)
    for name in rs.presets.names():
        print(f"preset {name:22s} {rs.param_count(rs.presets.get(name)):>15,d} parameters")
    cfg = rs.presets.get(args.preset)
    t0 = time.perf_counter()
    graphdef, params = rs.init(cfg, 0)
    print(f"init {args.preset}: {time.perf_counter() - t0:.2f}s")
    size = cfg.vision.image_size
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.stack([xx, yy, 0.5 * (xx + yy)], -1).astype(np.float32) * 2 - 1  # a gradient "scene"
    pixels = jnp.asarray(image)[None, None]
    ids = jnp.asarray([[cfg.image_token_id] + list(range(2, 52))], jnp.int32)
    feats = rs.encode_images(graphdef, params, pixels)
    print(f"image {pixels.shape} -> LLM embeddings {feats.shape}")
    granularity = jnp.asarray([rs.route("[SEG] water.")], jnp.int32)
    for label in ("compile+run", "run"):
        t0 = time.perf_counter()
        logits = rs.forward(graphdef, params, ids, pixels, granularity)
        logits.block_until_ready()
        print(f"forward ({label}): {time.perf_counter() - t0:.3f}s, logits {logits.shape} {logits.dtype}")
    print("next token:", int(jnp.argmax(logits[0, -1])), "| devices:", jax.devices())


if __name__ == "__main__":
    main()
