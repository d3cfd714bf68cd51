"""Batched, device-sharded generation over one task's records, scored against their ground truth.

    model = rsunivlm_jax.inference.predict.load_model(checkpoint)
    ev = evaluate(model, load_source(data), task="vg", options=EvalOptions(constrained=True), out_dir="eval/vg")

Decoding follows the model's `generation_config.json` (greedy by default), per-task
`max_new_tokens` defaults, optional grammar constraints for [VG] / [SEG] answers. With a mesh the
batch is split over its devices (data parallel; the model's parameters must be placed on it).
Files written into `out_dir`: ``predictions.jsonl`` (raw answers keyed by record id, so metrics can
be recomputed offline), ``examples/*.png`` and ``examples.png`` (answers next to the truth),
``report.md`` and, last, ``metrics.json``: each under a temporary name and renamed, so an existing
``metrics.json`` means the evaluation finished.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Mapping, Sequence

import jax
import numpy as np

from rsunivlm_jax import fileio, tasks
from rsunivlm_jax.eval import scoring
from rsunivlm_jax.inference import constrained as C
from rsunivlm_jax.inference.generate import decode_answers, default_max_new_tokens, generate
from rsunivlm_jax.inference.predict import LoadedModel

log = logging.getLogger(__name__)

CONSTRAINED_TASKS = ("vg",) + tasks.MASK_TASKS
METRICS_FILE, PREDICTIONS_FILE, REPORT_FILE = "metrics.json", "predictions.jsonl", "report.md"


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How an evaluation decodes and what it writes."""

    batch_size: int = 8
    limit: int | None = None            # the first N records of the task
    max_new_tokens: int | None = None   # default: per task
    constrained: bool = False           # grammar-constrained [VG] boxes / [SEG] masks
    grid_size: int = tasks.DEFAULT_GRID_SIZE
    max_text_len: int = 512             # longest prompt in tokens (images excluded)
    caption_mode: str = "auto"          # rsunivlm_jax.eval.captions: auto, official, java_free
    num_examples: int = 4               # example pictures written
    seed: int = 0

    def __post_init__(self):
        for name in ("batch_size", "limit", "max_new_tokens", "grid_size", "max_text_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} {value}: must be at least 1")


# --------------------------------------------------------------------------------------------
# Records and batches
# --------------------------------------------------------------------------------------------

def select_records(records, root, task: str, limit: int | None = None) -> list[dict]:
    """The validated records of `task` (the first `limit`): validated records (a `RecordSource` or
    its `.records`) or raw ones, validated against `root`. Raises ValueError when there are none."""
    from rsunivlm_jax.data import records as R
    if task not in tasks.TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {tasks.TASKS}")
    recs = list(records.records if hasattr(records, "records") else records)
    out = []
    for i, r in enumerate(recs):
        if "images" not in r:  # a raw record: validate it (resolves image paths under `root`)
            r = R.validate_record(r, root, fallback_id=f"#{i}")
        if r.get("task") == task:
            out.append(r)
    if not out:
        where = f" in {records.name}" if hasattr(records, "name") else ""
        raise ValueError(f"no records of task {task!r}{where}")
    return out[:limit] if limit is not None else out


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


def _constraint(model: LoadedModel, task: str, batch: dict, options: EvalOptions):
    if not (options.constrained and task in CONSTRAINED_TASKS):
        return None
    vocab = model.config.decoder.vocab_size
    if task == "vg":
        return C.box_constraint(model.tokenizer, vocab, len(batch["ids"]), eos_ids=model.eos_ids)
    return C.mask_constraint(model.tokenizer, vocab, _mask_labels(batch["prompts"], batch["gt"]),
                             grid_size=options.grid_size, eos_ids=model.eos_ids)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

def evaluate(model: LoadedModel, records, root, task: str, options: EvalOptions = EvalOptions(), *, mesh=None,
             out_dir=None, progress: bool = True, title: str | None = None, meta: Mapping | None = None) -> dict:
    """Generates answers for the `task` records (see `select_records`) and scores them.

    root: data root of image / mask paths. mesh: shard each batch over its devices. out_dir: also
    write the files of the module docstring. Returns ``{"result", "baselines", "predictions",
    "skipped", "skip_counts", "timing", "decoding", "files"}``.
    """
    from tqdm import tqdm

    from rsunivlm_jax.data.pipeline import make_eval_examples
    from rsunivlm_jax.data.records import SkipReport

    recs = select_records(records, root, task, options.limit)
    cfg = model.config
    budget = options.max_new_tokens or default_max_new_tokens(task, options.grid_size)
    n_img = tasks.TASK_NUM_IMAGES[task]
    report = SkipReport()
    examples = make_eval_examples(
        recs, tokenizer=model.tokenizer, image_size=cfg.vision.image_size, image_token_id=cfg.image_token_id,
        tokens_per_image=cfg.tokens_per_image, max_text_len=options.max_text_len,
        max_seq_len=options.max_text_len + n_img * cfg.tokens_per_image, max_images=n_img, lenient=True,
        pad_side="left", report=report)
    predictions, answers = [], {}
    gen_time, gen_tokens = 0.0, 0
    bar = tqdm(total=len(recs), desc=f"eval {task}", unit="sample", disable=not progress)
    key = jax.random.key(options.seed)
    for step, batch in enumerate(_batches(examples, options.batch_size)):
        b = _collate(batch)
        t0 = time.perf_counter()
        out = generate(model.graphdef, model.params, b["input_ids"], b["attention_mask"], b["pixel_values"],
                       b["granularity"], max_new_tokens=budget, eos_ids=model.eos_ids, sampling_params=model.sampling,
                       rng=jax.random.fold_in(key, step), constraint=_constraint(model, task, b, options), mesh=mesh,
                       config=cfg)
        gen_time += time.perf_counter() - t0
        gen_tokens += int(out.lengths.sum())
        decoded = decode_answers(model.tokenizer, out, model.eos_ids)
        for rid, prompt, answer, n in zip(b["ids"], b["prompts"], decoded, out.lengths):
            answers[rid] = answer
            predictions.append({"id": rid, "task": task, "prompt": prompt, "answer": answer, "tokens": int(n)})
        bar.update(len(batch))
    bar.update(len(recs) - bar.n)
    bar.close()
    kept = [r for r in recs if r["id"] in answers]
    if not kept:
        raise ValueError(f"every record of task {task!r} was skipped: {report.summary()}")
    kw = dict(grid_size=options.grid_size, caption_mode=options.caption_mode)
    if task in tasks.CAPTION_TASKS:
        from rsunivlm_jax.eval import captions
        if captions.resolve_mode(options.caption_mode) == captions.OFFICIAL:
            kw["meteor"] = captions.get_meteor()
    result = scoring.score_task(task, kept, answers, root, return_samples=True, **kw)
    baselines = scoring.trivial_baselines(task, kept, root, **kw)
    for pred, sample in zip(predictions, result["samples"]):
        pred["score"] = {k: v for k, v in sample.items() if k not in ("id", "answer")}
    timing = {"generate_s": gen_time, "generated_tokens": gen_tokens,
              "tokens_per_s": gen_tokens / gen_time if gen_time else None}
    decoding = {"max_new_tokens": budget, "constrained": bool(options.constrained and task in CONSTRAINED_TASKS),
                "sampling": dataclasses.asdict(model.sampling), "eos_ids": list(model.eos_ids), "seed": options.seed,
                "batch_size": options.batch_size, "devices": 1 if mesh is None else int(mesh.size),
                "grid_size": options.grid_size}
    out = {"result": result, "baselines": baselines, "predictions": predictions, "skipped": report.summary(),
           "skip_counts": dict(getattr(report, "counts", {})), "timing": timing, "decoding": decoding, "files": {}}
    if out_dir is not None:
        out["files"] = write_outputs(out_dir, task, out, kept, root, grid_size=options.grid_size,
                                     num_examples=options.num_examples, title=title, meta=meta)
    return out


def write_outputs(out_dir, task: str, evaluation: Mapping, records: Sequence[dict], root, *,
                  grid_size: int = tasks.DEFAULT_GRID_SIZE, num_examples: int = 4, title: str | None = None,
                  meta: Mapping | None = None) -> dict:
    """predictions.jsonl, example PNGs, report.md, then metrics.json (each atomic); returns {name: path}."""
    from rsunivlm_jax.eval import render, report

    out_dir = Path(out_dir)
    files = {"predictions": fileio.atomic_write_jsonl(out_dir / PREDICTIONS_FILE,
                                                      report.to_jsonable(evaluation["predictions"]))}
    panels = []
    by_id = {p["id"]: p for p in evaluation["predictions"]}
    for k, rec in enumerate(records[:num_examples]):
        try:
            picture = render.record_picture(rec, by_id[rec["id"]]["answer"], root, grid_size=grid_size,
                                            title=f"id {rec['id']}")
        except (OSError, ValueError) as e:  # a picture is a courtesy; never fail the evaluation for it
            log.warning("no example picture for %s: %s", rec.get("id"), e)
            continue
        name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(rec["id"]))
        files[f"example_{k}"] = render.save_png(picture, out_dir / "examples" / f"{name}.png")
        panels.append((str(rec["id"])[:40], picture))
    if panels:
        gallery = render.compose_gallery(panels, columns=min(len(panels), 4))
        files["examples"] = render.save_png(gallery, out_dir / "examples.png")
    timing = evaluation["timing"]
    notes = [f"decoding: {json.dumps(report.to_jsonable(evaluation['decoding']))}",
             f"skipped records: {evaluation['skipped']}"]
    if timing["tokens_per_s"]:
        notes.append(f"generation: {timing['generated_tokens']} tokens in {timing['generate_s']:.1f} s "
                     f"({timing['tokens_per_s']:.1f} tokens/s)")
    result = {k: v for k, v in evaluation["result"].items() if k != "samples"}
    text = report.markdown_report({task: result}, {task: evaluation["baselines"]},
                                  title=title or f"RSUniVLM evaluation: {task}", notes=notes)
    files["report_md"] = fileio.atomic_write_text(out_dir / REPORT_FILE, text)
    full_meta = {**(meta or {}), "task": task, "decoding": evaluation["decoding"], "timing": timing,
                 "skipped": evaluation["skipped"]}
    payload = {"meta": full_meta, "results": {task: result}, "baselines": {task: evaluation["baselines"]}}
    files["metrics_json"] = fileio.atomic_write_json(out_dir / METRICS_FILE, report.to_jsonable(payload),
                                                     sort_keys=True, allow_nan=False)
    return {k: str(v) for k, v in files.items()}
