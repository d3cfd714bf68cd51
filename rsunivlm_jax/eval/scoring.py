"""Scoring of model answers against instruction records, and the trivial baselines.

`score_task(task, records, answers, root)` turns the answers of one task into metrics, reading the
ground truth from each record's ``gt`` (schema in docs/data.md); masks are PNG files
under the data root. `trivial_baselines(task, records, root)` scores the same metrics for answers
that ignore the image. Both return plain dicts; `rsunivlm_jax.eval.report` writes them out.

Result layout::

    {"task": "vg", "n": 100,
     "metrics": {"acc@0.5": 0.61, "acc@0.7": 0.40, "mean_iou": 0.55, "parse_failure_rate": 0.01},
     "details": {...non-scalar extras: counts, per-type tables, caption mode...},
     "samples": [...]}            # per-sample outcome, only with return_samples=True

Each sample carries the record's share of its task's metrics (``id``, ``answer``, ``parsed`` and:
cls, vqa ``correct`` (+ ``question_type``); vg ``iou``, ``correct`` (IoU >= 0.5); cap, ccd, ref
``cider`` (the record's CIDEr; the corpus CIDEr is their mean); seg, cd ``iou`` and the record's
pixel ``tp``, ``fp``, ``fn``, ``tn``), so `rsunivlm_jax.eval.intervals` can recompute and
bootstrap the headline metrics from predictions.jsonl alone.

Per task (metric names in ``metrics``):

* cls: ``accuracy``; parse failure = an answer naming none of the candidate classes.
* vqa: ``average`` (mean over question types), ``overall``, ``acc/<type>``; failure = empty answer.
* vg:  ``acc@0.5``, ``acc@0.7``, ``mean_iou`` (pixel space); failure = no box parsed.
* ref: caption metrics against ``[gt["answer"]]`` (or ``gt["references"]`` when present) plus
  ``exact_match`` of normalised answers; failure = empty answer.
* cap, ccd: caption metrics; failure = empty answer.
* seg: ``miou``, ``ciou``, ``giou``; cd: ``precision``, ``recall``, ``f1``, ``iou``, ``oa``. Masks are
  decoded tolerantly (`rsunivlm_jax.tasks.decode_mask`) and nearest-upsampled to the ground-truth
  size; failure = the decoder had to repair anything (a strict parser would have rejected it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from rsunivlm_jax import tasks
from rsunivlm_jax.data import paths
from rsunivlm_jax.eval import captions, metrics
from rsunivlm_jax.tasks import CAPTION_TASKS, MASK_TASKS, TASKS  # noqa: F401  (task facts live in tasks.py)

CENTRE_BOX = "[25, 25, 75, 75]"


# --------------------------------------------------------------------------------------------
# Record access
# --------------------------------------------------------------------------------------------

def _record_id(record: Mapping, index: int) -> str:
    return str(record.get("id", f"#{index}")) if isinstance(record, Mapping) else f"#{index}"


def _gt(record: Mapping, index: int, key: str, task: str):
    """record["gt"][key], or a ValueError naming the record, the key and the task."""
    rid = _record_id(record, index)
    gt = record.get("gt") if isinstance(record, Mapping) else None
    if not isinstance(gt, Mapping):
        raise ValueError(f"record {rid}: missing or malformed 'gt' (task {task})")
    if key not in gt:
        raise ValueError(f"record {rid}: gt has no {key!r}, required for task {task}")
    return gt[key]


def _check_records(task: str, records: Sequence[Mapping]) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise ValueError(f"record #{i}: expected a JSON object, got {type(r).__name__}")
        if r.get("task", task) != task:
            raise ValueError(f"record {_record_id(r, i)}: task {r.get('task')!r}, scoring task {task!r}")


def _align_answers(records: Sequence[Mapping], answers) -> list[str]:
    """Answers as a list aligned with `records`; `answers` is a list or a mapping id -> answer."""
    if isinstance(answers, Mapping):
        out = []
        for i, r in enumerate(records):
            rid = _record_id(r, i)
            if rid not in answers:
                raise ValueError(f"record {rid}: no answer given")
            out.append(answers[rid])
        return out
    answers = list(answers)
    if len(answers) != len(records):
        raise ValueError(f"{len(answers)} answers for {len(records)} records")
    return answers


def _size(record: Mapping, index: int, task: str) -> tuple[float, float]:
    width, height = _gt(record, index, "width", task), _gt(record, index, "height", task)
    if not (isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0):
        raise ValueError(f"record {_record_id(record, index)}: gt width/height must be positive numbers, "
                         f"got {width!r} x {height!r}")
    return float(width), float(height)


def load_gt_mask(record: Mapping, index: int, root, task: str = "seg") -> np.ndarray:
    """The record's binary ground-truth mask (bool (H, W), PNG value > 127 = foreground).

    The path ``gt["mask"]`` is relative to `root` and must stay inside it; when the gt gives
    width / height they must match the file.
    """
    rid = _record_id(record, index)
    if root is None:
        raise ValueError(f"record {rid}: a data root is needed to read gt masks (task {task})")
    rel = _gt(record, index, "mask", task)
    try:
        path = paths.resolve_inside(root, rel, what="gt mask")
    except paths.DataError as e:
        where = f" (outside the data root {Path(root).resolve()})" if e.reason == "path_outside_root" else ""
        raise ValueError(f"record {rid}: {e.detail}{where}") from None
    if not path.is_file():
        raise ValueError(f"record {rid}: gt mask file {path} does not exist")
    with Image.open(path) as img:
        mask = np.asarray(img.convert("L")) > 127
    gt = record["gt"]
    if "width" in gt and "height" in gt and (mask.shape[1], mask.shape[0]) != (gt["width"], gt["height"]):
        raise ValueError(f"record {rid}: gt mask {rel} is {mask.shape[1]}x{mask.shape[0]}, "
                         f"gt says {gt['width']}x{gt['height']}")
    return mask


# --------------------------------------------------------------------------------------------
# Per-task scoring
# --------------------------------------------------------------------------------------------

def _empty(answer) -> bool:
    return metrics.normalise_answer(answer) == ""


def _caption_references(task: str, record: Mapping, index: int) -> list[str]:
    if task == "ref":
        gt = record.get("gt") or {}
        refs = gt.get("references") or [_gt(record, index, "answer", task)]
    else:
        refs = _gt(record, index, "references", task)
    if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
        raise ValueError(f"record {_record_id(record, index)}: references must be a non-empty list of "
                         f"strings (task {task}), got {refs!r}")
    return list(refs)


def _score_cls(records, answers, ctx):
    labels = [_gt(r, i, "label", "cls") for i, r in enumerate(records)]
    classes = [_gt(r, i, "classes", "cls") for i, r in enumerate(records)]
    res = metrics.classification_accuracy(answers, labels, classes)
    hits = [metrics.normalise_answer(a) == metrics.normalise_answer(l) for a, l in zip(answers, labels)]
    valid = [metrics.normalise_answer(a) in {metrics.normalise_answer(c) for c in cs}
             for a, cs in zip(answers, classes)]
    return ({"accuracy": res["accuracy"], "parse_failure_rate": res["invalid_rate"]},
            {"correct": res["correct"], "per_class": res["per_class"]},
            [{"correct": h, "parsed": v} for h, v in zip(hits, valid)])


def _score_vqa(records, answers, ctx):
    truth = [_gt(r, i, "answer", "vqa") for i, r in enumerate(records)]
    types = [str((r.get("gt") or {}).get("question_type", "unspecified")) for r in records]
    res = metrics.vqa_accuracy(answers, truth, types, average_over=ctx["vqa_average_over"])
    out = {"average": res["average"], "overall": res["overall"]}
    out.update({f"acc/{t}": v for t, v in res["per_type"].items()})
    out["parse_failure_rate"] = metrics.parse_failure_rate(_empty(a) for a in answers)
    hits = [metrics.normalise_answer(a) == metrics.normalise_answer(t) for a, t in zip(answers, truth)]
    return (out, {"count_per_type": res["count_per_type"],
                  "average_over": sorted(res["per_type"]) if ctx["vqa_average_over"] is None
                  else list(ctx["vqa_average_over"])},
            [{"correct": h, "parsed": not _empty(a), "question_type": t}
             for h, a, t in zip(hits, answers, types)])


def _score_vg(records, answers, ctx):
    gts = [_gt(r, i, "boxes_px", "vg") for i, r in enumerate(records)]
    sizes = [_size(r, i, "vg") for i, r in enumerate(records)]
    ious, parsed = metrics.grounding_ious(answers, gts, sizes)
    res = metrics.grounding_summary(ious, parsed)
    return ({k: v for k, v in res.items() if k != "n"}, {},
            [{"iou": float(v), "correct": bool(v >= 0.5), "parsed": bool(p)} for v, p in zip(ious, parsed)])


def _score_captions(task, records, answers, ctx):
    refs = [_caption_references(task, r, i) for i, r in enumerate(records)]
    res = captions.caption_metrics(answers, refs, mode=ctx["caption_mode"], meteor=ctx["meteor"])
    out = {k: res[k] for k in captions.METRIC_KEYS}
    samples = [{"parsed": not _empty(a), "cider": c} for a, c in zip(answers, res["CIDEr_per_sample"])]
    if task == "ref":
        truth = [_gt(r, i, "answer", task) for i, r in enumerate(records)]
        out["exact_match"] = metrics.exact_match_accuracy(answers, truth)
        for s, a, t in zip(samples, answers, truth):
            s["correct"] = metrics.normalise_answer(a) == metrics.normalise_answer(t)
    out["parse_failure_rate"] = metrics.parse_failure_rate(_empty(a) for a in answers)
    return out, {"caption_mode": res["mode"], "caption_note": res["note"]}, samples


def _mask_metrics(task, records, gts, preds, failed):
    if task == "seg":
        res = metrics.segmentation_metrics(preds, gts)
        out = {k: res[k] for k in ("miou", "ciou", "giou")}
        per_label: dict[str, tuple[int, int]] = {}
        for r, p, g in zip(records, preds, gts):
            label = str((r.get("gt") or {}).get("label", ""))
            i, u = per_label.get(label, (0, 0))
            per_label[label] = (i + int(np.count_nonzero(p & g)), u + int(np.count_nonzero(p | g)))
        details = {"iou_fg": res["iou_fg"], "iou_bg": res["iou_bg"],
                   "ciou_per_label": {k: (i / u if u else None) for k, (i, u) in sorted(per_label.items())}}
    else:
        res = metrics.change_detection_metrics(preds, gts)
        out = {k: res[k] for k in ("precision", "recall", "f1", "iou", "oa")}
        details = metrics.binary_confusion(preds, gts)
    out["parse_failure_rate"] = metrics.parse_failure_rate(failed)
    ious = metrics.sample_ious(preds, gts)
    confusions = metrics.sample_confusions(preds, gts)
    return out, details, [{"iou": float(v), "parsed": not f, **c} for v, f, c in zip(ious, failed, confusions)]


def _score_masks(task, records, answers, ctx):
    gts = [load_gt_mask(r, i, ctx["root"], task) for i, r in enumerate(records)]
    preds, failed, problems = [], [], []
    for answer, gt in zip(answers, gts):
        grid, probs = tasks.decode_mask(answer, ctx["grid_size"])
        preds.append(tasks.grid_to_mask(grid, gt.shape[0], gt.shape[1]))
        failed.append(bool(probs))
        problems.append(probs)
    out, details, samples = _mask_metrics(task, records, gts, preds, failed)
    for s, probs in zip(samples, problems):
        s["problems"] = probs[:3]
    return out, details, samples


def score_task(task: str, records: Sequence[Mapping], answers, root=None, *,
               grid_size: int = tasks.DEFAULT_GRID_SIZE, caption_mode: str = "auto", meteor=None,
               vqa_average_over: Sequence[str] | None = None, return_samples: bool = False) -> dict:
    """Metrics of `answers` for `records` of one task (see the module docstring for the names).

    task: one of ``cls vqa vg ref cap seg ccd cd``.
    records: instruction records (dicts with ``id``, ``task``, ``gt``).
    answers: model answers, a list aligned with `records` or a mapping record id -> answer.
    root: data root that ``gt["mask"]`` paths are relative to (seg, cd).
    grid_size: mask grid of the answers (24 for the released model).
    caption_mode: ``auto`` | ``official`` | ``java_free`` (`rsunivlm_jax.eval.captions`).
    meteor: a pycocoevalcap `Meteor` instance to reuse (official mode).
    vqa_average_over: question types to average (default: all types present).
    """
    records = list(records)
    _check_records(task, records)
    answers = _align_answers(records, answers)
    ctx = {"root": root, "grid_size": grid_size, "caption_mode": caption_mode, "meteor": meteor,
           "vqa_average_over": vqa_average_over}
    if task == "cls":
        out, details, samples = _score_cls(records, answers, ctx)
    elif task == "vqa":
        out, details, samples = _score_vqa(records, answers, ctx)
    elif task == "vg":
        out, details, samples = _score_vg(records, answers, ctx)
    elif task in CAPTION_TASKS:
        out, details, samples = _score_captions(task, records, answers, ctx)
    else:
        out, details, samples = _score_masks(task, records, answers, ctx)
    result = {"task": task, "n": len(records), "metrics": out, "details": details}
    if return_samples:
        for i, (s, r, a) in enumerate(zip(samples, records, answers)):
            s["id"] = _record_id(r, i)
            s["answer"] = a
        result["samples"] = samples
    return result


# --------------------------------------------------------------------------------------------
# Trivial baselines
# --------------------------------------------------------------------------------------------

def default_fixed_caption(task: str, records: Sequence[Mapping]) -> str:
    """The most frequent reference (normalised; first seen wins ties) of the set, in its first form."""
    refs = [ref for i, r in enumerate(records) for ref in _caption_references(task, r, i)]
    if not refs:
        raise ValueError(f"no references to pick a fixed caption from (task {task})")
    best = metrics.majority(metrics.normalise_answer(ref) for ref in refs)
    return next(ref for ref in refs if metrics.normalise_answer(ref) == best)


def trivial_baselines(task: str, records: Sequence[Mapping], root=None, *, fixed_caption: str | None = None,
                      grid_size: int = tasks.DEFAULT_GRID_SIZE, caption_mode: str = "auto", meteor=None,
                      vqa_average_over: Sequence[str] | None = None) -> dict:
    """Image-blind baselines scored with the same metrics as `score_task`.

    * cls: ``majority_class`` (most frequent ground-truth label of these records; an optimistic
      baseline since it looks at the test labels) and ``chance`` (expected accuracy of a uniform
      guess among each record's candidates: mean of 1 / #classes);
    * vqa: ``always_yes``;
    * vg: ``centre_box`` (always ``[25, 25, 75, 75]``);
    * seg, cd: ``all_background`` (empty mask);
    * cap, ccd, ref: ``fixed_caption`` (`fixed_caption`, default the most frequent reference).
    Returns ``{baseline_name: {"metrics": {...}, "details": {..., "answer": ...}}}``.
    """
    records = list(records)
    _check_records(task, records)
    if not records:
        return {}
    kw = dict(grid_size=grid_size, caption_mode=caption_mode, meteor=meteor, vqa_average_over=vqa_average_over)

    def constant(name: str, answer: str) -> dict:
        res = score_task(task, records, [answer] * len(records), root, **kw)
        return {name: {"metrics": res["metrics"], "details": {**res["details"], "answer": answer}}}

    if task == "cls":
        label = metrics.majority(_gt(r, i, "label", task) for i, r in enumerate(records))
        out = constant("majority_class", label)
        chance = metrics.mean_or_none(1.0 / len(_gt(r, i, "classes", task)) for i, r in enumerate(records))
        out["chance"] = {"metrics": {"accuracy": chance}, "details": {"answer": "uniform random class"}}
        return out
    if task == "vqa":
        return constant("always_yes", "yes")
    if task == "vg":
        return constant("centre_box", CENTRE_BOX)
    if task in CAPTION_TASKS:
        return constant("fixed_caption", fixed_caption if fixed_caption is not None
                        else default_fixed_caption(task, records))
    gts = [load_gt_mask(r, i, root, task) for i, r in enumerate(records)]
    preds = [np.zeros_like(g) for g in gts]
    out, details, _ = _mask_metrics(task, records, gts, preds, [False] * len(gts))
    return {"all_background": {"metrics": out, "details": {**details, "answer": "empty mask"}}}
