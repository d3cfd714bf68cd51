"""Command line: `rsunivlm-convert` / `python -m rsunivlm_jax.convert`.

    rsunivlm-convert --src TORCH_DIR --dst OUR_DIR [--dtype float32|bfloat16] [--upcycle-experts N]
                     [--vocab-rows keep|tokenizer|N] [--vision-layers N]
    rsunivlm-convert --to-torch --src OUR_DIR --dst TORCH_DIR [--dtype float32|bfloat16|float16]

Prints the detected layout and where the result went; on failure prints every problem on one
line and exits with status 2, leaving nothing at `--dst`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from rsunivlm_jax import cli_utils


def build_parser() -> cli_utils.ArgumentParser:
    p = cli_utils.ArgumentParser(prog="rsunivlm-convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="source directory (torch checkpoint, or ours with --to-torch)")
    p.add_argument("--dst", required=True, help="destination directory (must not exist or be empty)")
    p.add_argument("--dtype", default=None,
                   help="parameter dtype written: float32 (default on import) or bfloat16; "
                        "with --to-torch the stored dtype by default")
    p.add_argument("--upcycle-experts", type=cli_utils.positive_int, default=None, metavar="N",
                   help="copy a dense feed-forward into N identical experts (default: as stored; dense stays 1)")
    p.add_argument("--vocab-rows", default="keep", metavar="keep|tokenizer|N",
                   help="vocabulary rows of embed_tokens / lm_head to keep: all (keep, default), the tokenizer "
                        "length (tokenizer), or the first N; recorded in meta.json")
    p.add_argument("--vision-layers", type=cli_utils.positive_int, default=None, metavar="N",
                   help="keep only the first N SigLIP blocks (default: as the config selects)")
    p.add_argument("--to-torch", action="store_true", help="export one of our checkpoints to PyTorch safetensors")
    p.add_argument("--shard-size-gb", type=cli_utils.positive_float, default=2.0,
                   help="--to-torch: maximum size of one shard file")
    p.add_argument("--no-hash", action="store_true", help="skip sha256 of the source files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.time()
    if args.to_torch:
        from rsunivlm_jax.convert.export import export_to_torch
        out = export_to_torch(args.src, args.dst, dtype=args.dtype,
                              max_shard_bytes=int(args.shard_size_gb * (1 << 30)), progress=not args.quiet)
        print(f"exported {out['num_tensors']} tensors ({out['dtype']}) in the {out['layout']} layout "
              f"to {args.dst}: {out['files']} in {time.time() - t0:.1f} s")
        return 0
    from rsunivlm_jax.convert.convert import convert
    meta = convert(args.src, args.dst, dtype=args.dtype or "float32", upcycle_experts=args.upcycle_experts,
                   vocab_rows=args.vocab_rows, vision_layers=args.vision_layers,
                   hash_files=not args.no_hash, progress=not args.quiet)
    print(f"detected layout: {meta['source']['layout_detected']} (model_type "
          f"{meta['source']['model_type']}): {meta['source']['layout_description']}")
    if meta.get("vocabulary"):
        print(f"vocabulary: {json.dumps(meta['vocabulary'])}")
    for note in meta["notes"]:
        print(f"note: {note}")
    print(f"wrote {args.dst} (parts {meta['parts']}, {meta['param_dtype']}) in {time.time() - t0:.1f} s")
    return 0


def main(argv=None) -> int:
    return cli_utils.run("rsunivlm-convert", _run, argv)

if __name__ == "__main__":
    sys.exit(main())
