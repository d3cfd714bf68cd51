"""Data pipeline throughput: samples/s of `make_dataset` at 384x384 with 0 and 2 worker processes.

    python bench/data_pipeline.py [--scenes 24] [--source-size 512] [--batch-size 8] [--batches 20]
                                  [--workers 0 2] [--data DIR] [--grouping granularity]

Writes the built-in synthetic dataset (all eight tasks; images `--source-size` px, so the bicubic
resize to 384 is part of the measurement) unless `--data` points to a record source, then times
`--batches` batches after `--warmup` batches (worker start-up is excluded by the warm-up) for each
worker count, with the real Qwen2 tokenizer and the real model's numbers (730 tokens per image,
image token id 151646).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(source, tokenizer, workers: int, args) -> dict:
    from rsunivlm_jax.data import pipeline
    ds = pipeline.make_dataset(
        [source], tokenizer=tokenizer, image_size=args.image_size, image_token_id=151646,
        tokens_per_image=730, max_text_len=args.max_text_len, max_seq_len=args.max_seq_len, max_images=2,
        batch_size=args.batch_size, seed=0, grouping=args.grouping, num_workers=workers,
        shard_index=0, shard_count=1)
    it = iter(ds)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        next(it)
    t1 = time.perf_counter()
    for _ in range(args.batches):
        next(it)
    t2 = time.perf_counter()
    if hasattr(it, "close"):
        it.close()   # stop worker processes now rather than at interpreter exit
    n = args.batches * args.batch_size
    return {"workers": workers, "samples_per_s": round(n / (t2 - t1), 2), "timed_samples": n,
            "warmup_s": round(t1 - t0, 2), "timed_s": round(t2 - t1, 2)}


def main() -> None:
    from absl import flags
    flags.FLAGS.mark_as_parsed()   # grain worker processes read absl flags
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="record source (default: write a synthetic one)")
    p.add_argument("--scenes", type=int, default=24)
    p.add_argument("--source-size", type=int, default=512)
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-text-len", type=int, default=1024)
    p.add_argument("--max-seq-len", type=int, default=4096)
    p.add_argument("--grouping", default="granularity", choices=["granularity", "mixed"])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = p.parse_args()

    from rsunivlm_jax.data import records
    from rsunivlm_jax.data.tokenizer import load_default_tokenizer
    tmp = None
    data = args.data
    if data is None:
        from rsunivlm_jax.data import synthetic
        tmp = tempfile.TemporaryDirectory()
        data = tmp.name
        t = time.perf_counter()
        synthetic.write_dataset(data, args.scenes, image_size=args.source_size, seed=0, progress=False)
        print(f"synthetic data: {args.scenes} scenes at {args.source_size}px in {time.perf_counter() - t:.1f}s")
    source = records.load_source(data, strict=True)
    tok = load_default_tokenizer()
    print(f"source: {len(source)} records; batch {args.batch_size}; {args.image_size}x{args.image_size}; "
          f"cpu count {os.cpu_count()}")
    results = [run(source, tok, w, args) for w in args.workers]
    for r in results:
        print(json.dumps(r))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
