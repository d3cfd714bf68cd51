"""`rsunivlm-eval`: batched, device-sharded generation over one task's records, scored and reported.

    rsunivlm-eval --checkpoint DIR --task {cls,vqa,vg,ref,cap,seg,ccd,cd} --data SOURCE [--limit N] --out DIR

Writes into --out: ``metrics.json`` and ``report.md`` (`rsunivlm_jax.eval.report`, with the
image-blind baselines of `scoring.trivial_baselines`), ``predictions.jsonl`` (raw answers keyed by
record id, so metrics can be recomputed offline) and ``examples/*.png`` (answers drawn next to the
ground truth) plus ``examples.png`` (a gallery of them).

Decoding follows the checkpoint's `generation_config.json` (greedy by default), per-task
`max_new_tokens` defaults, optional grammar constraints for [VG] / [SEG] answers. With several
devices the batch is split over all of them (data parallel, parameters replicated).
`evaluate(...)` is the same pipeline as a function (the demo calls it in-process).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import jax
import numpy as np

from rsunivlm_jax import tasks
from rsunivlm_jax.eval import scoring
from rsunivlm_jax.inference import constrained as C
from rsunivlm_jax.inference.generate import decode_answers, default_max_new_tokens, generate
from rsunivlm_jax.inference.sampling import SamplingParams

log = logging.getLogger(__name__)

CONSTRAINED_TASKS = ("vg", "seg", "cd")
GT_COLOR, PRED_COLOR = (0, 200, 0), (255, 0, 0)


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------

def _batches(examples, size: int):
    batch = []
    for ex in examples:
        batch.append(ex)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _collate(batch: Sequence[dict]) -> dict:
    ids = np.stack([e["input_ids"] for e in batch])
    mask = np.stack([e["attention_mask"] for e in batch])
    first = int(np.argmax(mask.any(axis=0)))  # drop columns that are padding in every row (left padding)
    return {"input_ids": ids[:, first:], "attention_mask": mask[:, first:],
            "pixel_values": np.stack([e["pixel_values"] for e in batch]),
            "granularity": np.asarray([e["granularity"] for e in batch], np.int32),
            "prompts": [e["prompt"] for e in batch], "ids": [e["id"] for e in batch],
            "gt": [e.get("gt") or {} for e in batch]}


def _mask_labels(prompts: Sequence[str], gts: Sequence[Mapping]) -> list[str]:
    out = []
    for p, gt in zip(prompts, gts):
        try:
            out.append(C.seg_label_from_prompt(p))
        except ValueError:
            out.append(C.check_mask_label(gt.get("label", "")))
    return out


def _normalise_records(records, root, task: str) -> list[dict]:
    from rsunivlm_jax.data import records as R
    recs = list(records.records if hasattr(records, "records") else records)
    out = []
    for i, r in enumerate(recs):
        if "images" not in r:  # a raw record: validate it (resolves image paths under `root`)
            r = R.validate_record(r, root, fallback_id=f"#{i}")
        if r.get("task") == task:
            out.append(r)
    return out


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

def evaluate(graphdef, params, config, tokenizer, records, root, task: str, *, batch_size: int = 8,
             max_new_tokens: int | None = None, sampling_params: SamplingParams | None = None,
             eos_ids: Sequence[int] | None = None, constrained: bool = False,
             grid_size: int = tasks.DEFAULT_GRID_SIZE, mesh=None, limit: int | None = None,
             max_text_len: int = 512, caption_mode: str = "auto", out_dir=None, num_examples: int = 4,
             progress: bool = True, rng: int = 0, title: str | None = None, meta: Mapping | None = None) -> dict:
    """Generates answers for the `task` records and scores them.

    records: validated records (`rsunivlm_jax.data.records.load_source(...)`, or its `.records`), or
    raw records that are validated against `root`; other tasks' records are ignored. root: data
    root of image / mask paths. mesh: shard each batch over its devices (params must already be
    placed on it). out_dir: also write metrics.json, report.md, predictions.jsonl and example PNGs.
    Returns ``{"result", "baselines", "predictions", "skipped", "timing", "files"}``.
    """
    from tqdm import tqdm

    from rsunivlm_jax.data.pipeline import make_eval_examples
    from rsunivlm_jax.data.records import SkipReport

    if task not in scoring.TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {scoring.TASKS}")
    recs = _normalise_records(records, root, task)
    if limit is not None:
        recs = recs[:limit]
    if not recs:
        raise ValueError(f"no records of task {task!r} in the data")
    sp = sampling_params or SamplingParams(penalize_prompt=False)
    eos = tuple(config.eos_token_ids if eos_ids is None else eos_ids)
    budget = max_new_tokens or default_max_new_tokens(task, grid_size)
    n_img = tasks.TASK_NUM_IMAGES[task]
    report = SkipReport()
    examples = make_eval_examples(
        recs, tokenizer=tokenizer, image_size=config.vision.image_size, image_token_id=config.image_token_id,
        tokens_per_image=config.tokens_per_image, max_text_len=max_text_len,
        max_seq_len=max_text_len + n_img * config.tokens_per_image, max_images=n_img, lenient=True,
        pad_side="left", report=report)
    predictions, answers = [], {}
    gen_time, gen_tokens = 0.0, 0
    bar = tqdm(total=len(recs), desc=f"eval {task}", unit="sample", disable=not progress)
    key = jax.random.key(rng)
    for step, batch in enumerate(_batches(examples, batch_size)):
        b = _collate(batch)
        constraint = None
        if constrained and task in CONSTRAINED_TASKS:
            if task == "vg":
                constraint = C.box_constraint(tokenizer, config.decoder.vocab_size, len(batch), eos_ids=eos)
            else:
                constraint = C.mask_constraint(tokenizer, config.decoder.vocab_size,
                                               _mask_labels(b["prompts"], b["gt"]), grid_size=grid_size,
                                               eos_ids=eos)
        t0 = time.perf_counter()
        out = generate(graphdef, params, b["input_ids"], b["attention_mask"], b["pixel_values"], b["granularity"],
                       max_new_tokens=budget, eos_ids=eos, sampling_params=sp, rng=jax.random.fold_in(key, step),
                       constraint=constraint, mesh=mesh, config=config)
        gen_time += time.perf_counter() - t0
        gen_tokens += int(out.lengths.sum())
        for rid, prompt, answer, n in zip(b["ids"], b["prompts"], decode_answers(tokenizer, out, eos), out.lengths):
            answers[rid] = answer
            predictions.append({"id": rid, "task": task, "prompt": prompt, "answer": answer, "tokens": int(n)})
        bar.update(len(batch))
    bar.update(len(recs) - bar.n)
    bar.close()
    kept = [r for r in recs if r["id"] in answers]
    if not kept:
        raise ValueError(f"every record of task {task!r} was skipped: {report.summary()}")
    kw = dict(grid_size=grid_size, caption_mode=caption_mode)
    if task in scoring.CAPTION_TASKS:
        from rsunivlm_jax.eval import captions
        if captions.resolve_mode(caption_mode) == captions.OFFICIAL:
            kw["meteor"] = captions.get_meteor()
    result = scoring.score_task(task, kept, answers, root, return_samples=True, **kw)
    baselines = scoring.trivial_baselines(task, kept, root, **kw)
    for pred, sample in zip(predictions, result["samples"]):
        pred["score"] = {k: v for k, v in sample.items() if k not in ("id", "answer")}
    timing = {"generate_s": gen_time, "generated_tokens": gen_tokens,
              "tokens_per_s": gen_tokens / gen_time if gen_time else None}
    decoding = {"max_new_tokens": budget, "constrained": bool(constrained and task in CONSTRAINED_TASKS),
                "sampling": dataclasses.asdict(sp), "eos_ids": list(eos), "seed": rng,
                "batch_size": batch_size, "devices": 1 if mesh is None else int(mesh.size), "grid_size": grid_size}
    out = {"result": result, "baselines": baselines, "predictions": predictions, "skipped": report.summary(),
           "skip_counts": dict(getattr(report, "counts", {})), "timing": timing, "decoding": decoding, "files": {}}
    if out_dir is not None:
        out["files"] = write_outputs(out_dir, task, out, kept, root, grid_size=grid_size, num_examples=num_examples,
                                     title=title, meta=meta)
    return out


def write_outputs(out_dir, task: str, evaluation: Mapping, records: Sequence[dict], root, *,
                  grid_size: int = tasks.DEFAULT_GRID_SIZE, num_examples: int = 4, title: str | None = None,
                  meta: Mapping | None = None) -> dict:
    """metrics.json + report.md, predictions.jsonl, example PNGs; returns {name: path}."""
    from rsunivlm_jax.eval import report
    from rsunivlm_jax.eval.render import compose_gallery, save_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = evaluation["result"]
    notes = [f"decoding: {json.dumps(report.to_jsonable(evaluation['decoding']))}",
             f"skipped records: {evaluation['skipped']}"]
    if evaluation["timing"]["tokens_per_s"]:
        notes.append(f"generation: {evaluation['timing']['generated_tokens']} tokens in "
                     f"{evaluation['timing']['generate_s']:.1f} s ({evaluation['timing']['tokens_per_s']:.1f} tokens/s)")
    full_meta = {**(meta or {}), "task": task, "decoding": evaluation["decoding"], "timing": evaluation["timing"],
                 "skipped": evaluation["skipped"]}
    files = dict(report.write_report(out_dir, {task: result}, {task: evaluation["baselines"]},
                                     title=title or f"RSUniVLM evaluation: {task}", notes=notes, meta=full_meta))
    pred_path = out_dir / "predictions.jsonl"
    with open(pred_path, "w", encoding="utf-8") as f:
        for p in evaluation["predictions"]:
            f.write(json.dumps(report.to_jsonable(p), ensure_ascii=False) + "\n")
    files["predictions"] = pred_path
    panels = []
    by_id = {p["id"]: p for p in evaluation["predictions"]}
    for k, rec in enumerate(records[:num_examples]):
        try:
            picture = example_picture(task, rec, by_id[rec["id"]]["answer"], root, grid_size=grid_size)
        except (OSError, ValueError) as e:  # a picture is a courtesy; never fail the evaluation for it
            log.warning("no example picture for %s: %s", rec.get("id"), e)
            continue
        name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(rec["id"]))
        files[f"example_{k}"] = save_png(picture, out_dir / "examples" / f"{name}.png")
        panels.append((str(rec["id"])[:40], picture))
    if panels:
        files["examples"] = save_png(compose_gallery(panels, columns=min(len(panels), 4)), out_dir / "examples.png")
    return {k: str(v) for k, v in files.items()}


def example_picture(task: str, record: Mapping, answer: str, root, *, grid_size: int = tasks.DEFAULT_GRID_SIZE):
    """Answer (red) next to / over the ground truth (green) for one record, as a PIL image."""
    from rsunivlm_jax.data.preprocess import open_image
    from rsunivlm_jax.eval import render as R
    from rsunivlm_jax.inference.predict_cli import draw_boxes

    images = [open_image(p) for p in record["images"]]
    gt = record.get("gt") or {}
    short = answer if len(answer) <= 60 else answer[:57] + "..."
    if task == "vg":
        pic = draw_boxes(images[0], gt.get("boxes_px", []), units="pixels", colors=[GT_COLOR])
        pic = draw_boxes(pic, tasks.parse_boxes(answer), colors=[PRED_COLOR])
        return R.compose_gallery([(f"pred (red): {short}", pic)])
    if task == "ref":
        pic = draw_boxes(images[0], [gt["box_px"]] if "box_px" in gt else [], units="pixels", colors=[GT_COLOR])
        return R.compose_gallery([(f"pred: {short}", pic), (f"gt: {gt.get('answer', '')[:60]}", images[0])],
                                 columns=2)
    if task in ("seg", "cd"):
        grid, _ = tasks.decode_mask(answer, grid_size)
        truth = scoring.load_gt_mask(record, 0, root, task)
        if task == "cd":
            return R.compose_gallery([("prediction", R.change_map_panel(images[0], images[1], grid)),
                                      ("ground truth", R.change_map_panel(images[0], images[1], truth))], columns=1)
        return R.compose_gallery([("prediction", R.overlay_mask(images[0], grid)),
                                  ("ground truth", R.overlay_mask(images[0], truth, color=GT_COLOR))], columns=2)
    truth = gt.get("label") or gt.get("answer") or (gt.get("references") or [""])[0]
    panels = [(f"pred: {short}" if i == len(images) - 1 else f"gt: {str(truth)[:60]}", img)
              for i, img in enumerate(images)]
    if len(images) == 1:
        panels = [(f"pred: {short} | gt: {str(truth)[:40]}", images[0])]
    return R.compose_gallery(panels, columns=len(panels))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def _mesh(devices: str):
    if devices == "1" or jax.device_count() == 1:
        return None
    from rsunivlm_jax.sharding import make_mesh
    return make_mesh((-1,), ("data",))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rsunivlm-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="converted/exported checkpoint or training work directory")
    p.add_argument("--task", required=True, choices=scoring.TASKS)
    p.add_argument("--data", required=True, help="records: a JSON / JSONL file or a record directory")
    p.add_argument("--split", help="split of a record directory (default: all files)")
    p.add_argument("--limit", type=int, help="evaluate the first N records of the task")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch-size", type=int, default=8, help="rounded up to a multiple of the device count")
    p.add_argument("--max-new-tokens", type=int, help="default: per task")
    p.add_argument("--constrained", action="store_true", help="grammar-constrained [VG] boxes / [SEG] masks")
    p.add_argument("--grid-size", type=int, default=tasks.DEFAULT_GRID_SIZE)
    p.add_argument("--caption-mode", default="auto", choices=("auto", "official", "java_free"))
    p.add_argument("--examples", type=int, default=4, help="example pictures to write")
    p.add_argument("--max-text-len", type=int, default=512, help="longest prompt in tokens (images excluded)")
    p.add_argument("--devices", default="all", choices=("all", "1"), help="data-parallel over all devices or one")
    p.add_argument("--do-sample", action="store_true",
                   help="sample (with generation_config.json's temperature / top-k / top-p unless given); "
                        "default greedy, as the reference demo")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float, help="default: generation_config.json, else 1.0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from jax.sharding import NamedSharding, PartitionSpec as P

    from rsunivlm_jax.data.records import load_source
    from rsunivlm_jax.inference.predict_cli import load_model

    source = load_source(args.data, split=args.split, max_images=2, grid_size=args.grid_size)
    if source.report.skipped:
        print(f"data: {source.report.summary()}", file=sys.stderr)
    model = load_model(args.checkpoint, do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, repetition_penalty=args.repetition_penalty)
    mesh = _mesh(args.devices)
    params, batch_size = model.params, args.batch_size
    if mesh is not None:
        params = jax.device_put(params, NamedSharding(mesh, P()))
        batch_size = -(-batch_size // mesh.size) * mesh.size
    meta = {"checkpoint": str(Path(args.checkpoint).resolve()), "data": str(Path(args.data).resolve()),
            "split": args.split, "limit": args.limit, "argv": list(sys.argv[1:] if argv is None else argv)}
    ev = evaluate(model.graphdef, params, model.config, model.tokenizer, source, source.root, args.task,
                  batch_size=batch_size, max_new_tokens=args.max_new_tokens, sampling_params=model.sampling,
                  eos_ids=model.eos_ids, constrained=args.constrained, grid_size=args.grid_size, mesh=mesh,
                  limit=args.limit, max_text_len=args.max_text_len, caption_mode=args.caption_mode,
                  out_dir=args.out, num_examples=args.examples, progress=not args.no_progress, rng=args.seed,
                  meta=meta)
    metrics = {k: v for k, v in ev["result"]["metrics"].items()}
    print(json.dumps({"task": args.task, "n": ev["result"]["n"], "metrics": metrics}, default=str))
    print(f"wrote {ev['files'].get('metrics_json')} and {ev['files'].get('report_md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
