"""Evaluation metrics of RSUniVLM's non-caption tasks, pure numpy.

Every function takes plain Python lists / numpy arrays and returns plain Python numbers and dicts;
nothing here reads files or knows the record schema (that is `rsunivlm_jax.eval.scoring`).

* `normalise_answer` - lower-case, punctuation to spaces, collapsed whitespace.
* `classification_accuracy` - exact match of normalised answers (AID / NWPU / SIRI-WHU style).
* `vqa_accuracy` - exact match per question type, their mean and the overall (micro) accuracy.
* `grounding_ious` / `grounding_accuracy` - first parsed box, 0-100 -> pixels with the image's
  own W and H, IoU >= threshold (TransVG / RSVG style ``iou >= 0.5``); unparsable = wrong.
* `segmentation_metrics` - mIoU over {background, foreground}, cIoU (sum I / sum U) and gIoU (mean
  per-sample IoU, LISA convention: an empty prediction of an empty target scores 1).
* `change_detection_metrics` - precision, recall, F1 and IoU of the changed class, plus OA.
* `binary_confusion` / `sample_confusions` - pixel TP / FP / FN / TN, pooled or per sample (the
  sufficient statistics of both mask metrics, used by `rsunivlm_jax.eval.intervals`).
* `parse_failure_rate` - fraction of answers that did not parse.

Answer text formats (boxes on 0-100, row-RLE masks) are parsed by `rsunivlm_jax.tasks`.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Iterable, Mapping, Sequence

import numpy as np

from rsunivlm_jax import tasks

# Any character that is neither a word character nor whitespace, and the underscore.
_PUNCT_RE = re.compile(r"[^\w\s]|_")


def _ratio(num: float, den: float, empty: float | None = 0.0) -> float | None:
    """num / den as a Python float, `empty` when den == 0."""
    return float(num) / float(den) if den else empty


# --------------------------------------------------------------------------------------------
# Text answers
# --------------------------------------------------------------------------------------------

def normalise_answer(text) -> str:
    """Answer normalisation: NFKC, lower-case, punctuation -> space, single spaces.

    ``"Yes."`` -> ``"yes"``; ``"Sparse_Residential "`` -> ``"sparse residential"``. Non-strings
    (``None``) normalise to ``""``.
    """
    if not isinstance(text, str):
        return ""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT_RE.sub(" ", text).split())


def classification_accuracy(predictions: Sequence[str], labels: Sequence[str],
                            classes: Sequence[Sequence[str]] | None = None) -> dict:
    """Scene-classification accuracy: normalised answer == normalised class name.

    `classes` (optional, one candidate list per sample) adds ``invalid_rate``: the fraction of
    answers that name none of the candidates (counted as the task's parse failures).
    Returns ``{"accuracy", "correct", "n", "per_class", ["invalid", "invalid_rate"]}`` with
    ``per_class`` the accuracy of each ground-truth class.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if classes is not None and len(classes) != len(labels):
        raise ValueError(f"{len(classes)} class lists for {len(labels)} labels")
    hits = [normalise_answer(p) == normalise_answer(l) for p, l in zip(predictions, labels)]
    per_class_hits: dict[str, list[bool]] = {}
    for hit, label in zip(hits, labels):
        per_class_hits.setdefault(normalise_answer(label), []).append(hit)
    out = {
        "accuracy": _ratio(sum(hits), len(hits), None),
        "correct": int(sum(hits)),
        "n": len(hits),
        "per_class": {c: _ratio(sum(h), len(h)) for c, h in sorted(per_class_hits.items())},
    }
    if classes is not None:
        invalid = sum(normalise_answer(p) not in {normalise_answer(c) for c in cands}
                      for p, cands in zip(predictions, classes))
        out["invalid"] = int(invalid)
        out["invalid_rate"] = _ratio(invalid, len(hits), None)
    return out


def exact_match_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float | None:
    """Fraction of normalised predictions equal to the normalised answers (None when empty)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    hits = [normalise_answer(p) == normalise_answer(a) for p, a in zip(predictions, answers)]
    return _ratio(sum(hits), len(hits), None)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str],
                 question_types: Sequence[str] | None = None,
                 average_over: Iterable[str] | None = None) -> dict:
    """RSVQA-style accuracy: exact match of normalised answers, per question type and averaged.

    Returns ``{"per_type": {type: acc}, "count_per_type", "average", "overall", "n"}``:
    ``average`` is the unweighted mean of the per-type accuracies (over `average_over` when given,
    e.g. ``("presence", "comparison")`` for the GeoChat / LHRS-Bot protocol without count / area),
    ``overall`` the accuracy over all questions.
    """
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if question_types is None:
        question_types = ["all"] * len(answers)
    if len(question_types) != len(answers):
        raise ValueError(f"{len(question_types)} question types for {len(answers)} answers")
    by_type: dict[str, list[bool]] = {}
    for p, a, t in zip(predictions, answers, question_types):
        by_type.setdefault(str(t), []).append(normalise_answer(p) == normalise_answer(a))
    per_type = {t: _ratio(sum(h), len(h)) for t, h in sorted(by_type.items())}
    chosen = sorted(per_type) if average_over is None else [t for t in average_over if t in per_type]
    all_hits = [h for hs in by_type.values() for h in hs]
    return {
        "per_type": per_type,
        "count_per_type": {t: len(h) for t, h in sorted(by_type.items())},
        "average": float(np.mean([per_type[t] for t in chosen])) if chosen else None,
        "overall": _ratio(sum(all_hits), len(all_hits), None),
        "n": len(all_hits),
    }


# --------------------------------------------------------------------------------------------
# Grounding (pixel space)
# --------------------------------------------------------------------------------------------

def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``[x1, y1, x2, y2]`` boxes in continuous coordinates (area = w * h, no +1).

    Corners are reordered first, so an inverted box is its normal counterpart.
    """
    ax1, ax2 = sorted((float(a[0]), float(a[2])))
    ay1, ay2 = sorted((float(a[1]), float(a[3])))
    bx1, bx2 = sorted((float(b[0]), float(b[2])))
    by1, by2 = sorted((float(b[1]), float(b[3])))
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def _clip_box(box: Sequence[float], width: float, height: float) -> tuple[float, ...]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
            min(max(x2, 0.0), width), min(max(y2, 0.0), height))


def first_box_pixels(answer: str, width: float, height: float) -> tuple[float, ...] | None:
    """The first box parsed from `answer` (0-100) in pixels of a W x H image, clipped; or None."""
    boxes = tasks.parse_boxes(answer)
    if not boxes:
        return None
    return _clip_box(tasks.boxes_to_pixels([boxes[0]], width, height)[0], width, height)


def grounding_ious(answers: Sequence[str], gt_boxes_px: Sequence, sizes: Sequence[tuple[float, float]]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample IoU of the first predicted box with the ground truth, in pixel space.

    answers: model answers (``"[x1, y1, x2, y2]"`` on 0-100, relative to the original image).
    gt_boxes_px: per sample one pixel box or a list of pixel boxes; with several ground-truth
      boxes the best-matching one counts (max IoU).
    sizes: per sample the original image's ``(width, height)``.
    Returns ``(ious float64[N], parsed bool[N])``; unparsable answers get IoU 0.
    """
    if not (len(answers) == len(gt_boxes_px) == len(sizes)):
        raise ValueError(f"lengths differ: {len(answers)} answers, {len(gt_boxes_px)} ground truths, "
                         f"{len(sizes)} sizes")
    ious = np.zeros(len(answers), dtype=np.float64)
    parsed = np.zeros(len(answers), dtype=bool)
    for i, (answer, gt, (width, height)) in enumerate(zip(answers, gt_boxes_px, sizes)):
        if width <= 0 or height <= 0:
            raise ValueError(f"sample {i}: image size must be positive, got {width}x{height}")
        gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
        if gt.shape[0] == 0:
            raise ValueError(f"sample {i}: no ground-truth box")
        pred = first_box_pixels(answer, width, height)
        if pred is None:
            continue
        parsed[i] = True
        ious[i] = max(box_iou(pred, g) for g in gt)
    return ious, parsed


def grounding_accuracy(answers: Sequence[str], gt_boxes_px: Sequence, sizes: Sequence[tuple[float, float]],
                       thresholds: Sequence[float] = (0.5, 0.7)) -> dict:
    """Acc@t for each threshold (IoU >= t, pixel space), mean IoU and the parse-failure rate.

    Returns ``{"acc@0.5", "acc@0.7", "mean_iou", "parse_failure_rate", "n"}``.
    """
    return grounding_summary(*grounding_ious(answers, gt_boxes_px, sizes), thresholds=thresholds)


def grounding_summary(ious: np.ndarray, parsed: np.ndarray, thresholds: Sequence[float] = (0.5, 0.7)) -> dict:
    """`grounding_accuracy` from precomputed per-sample IoUs and parse flags."""
    ious, parsed = np.asarray(ious, dtype=np.float64), np.asarray(parsed, dtype=bool)
    n = len(ious)
    out = {f"acc@{t:g}": _ratio(int(np.sum(ious >= t)), n, None) for t in thresholds}
    out["mean_iou"] = float(ious.mean()) if n else None
    out["parse_failure_rate"] = parse_failure_rate(~parsed)
    out["n"] = n
    return out


# --------------------------------------------------------------------------------------------
# Masks: segmentation and change detection
# --------------------------------------------------------------------------------------------

def _checked_pairs(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]):
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted masks for {len(gts)} ground-truth masks")
    for i, (p, g) in enumerate(zip(preds, gts)):
        p, g = np.asarray(p, dtype=bool), np.asarray(g, dtype=bool)
        if p.shape != g.shape:
            raise ValueError(f"sample {i}: predicted mask {p.shape} and ground truth {g.shape} differ; "
                             "upsample the prediction to the ground-truth size first")
        yield p, g


def sample_confusions(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> list[dict]:
    """Pixel counts of each sample: ``[{"tp", "fp", "fn", "tn"}, ...]`` (foreground = True)."""
    return [{"tp": int(np.count_nonzero(p & g)), "fp": int(np.count_nonzero(p & ~g)),
             "fn": int(np.count_nonzero(~p & g)), "tn": int(np.count_nonzero(~p & ~g))}
            for p, g in _checked_pairs(preds, gts)]


def binary_confusion(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> dict:
    """Pixel counts over all samples: ``{"tp", "fp", "fn", "tn"}`` (foreground = True)."""
    per_sample = sample_confusions(preds, gts)
    return {k: sum(c[k] for c in per_sample) for k in ("tp", "fp", "fn", "tn")}


def sample_ious(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> np.ndarray:
    """Foreground IoU of each sample; an empty prediction of an empty target scores 1.0 (LISA)."""
    out = []
    for p, g in _checked_pairs(preds, gts):
        union = np.count_nonzero(p | g)
        out.append(np.count_nonzero(p & g) / union if union else 1.0)
    return np.asarray(out, dtype=np.float64)


def segmentation_metrics(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> dict:
    """Binary (referring / one-class semantic) segmentation metrics over full-size masks.

    preds / gts: bool (H, W) masks per sample, predictions already nearest-upsampled from the grid
    to the ground-truth size (`rsunivlm_jax.tasks.grid_to_mask`).
    * ``iou_fg`` / ``iou_bg``: TP / (TP + FP + FN) of each class, pixels pooled over the dataset;
    * ``miou``: mean of the two (a class absent from both predictions and targets is left out);
    * ``ciou``: sum of intersections / sum of unions (= ``iou_fg``);
    * ``giou``: mean per-sample foreground IoU (empty vs empty = 1.0, as LISA).
    """
    c = binary_confusion(preds, gts)
    iou_fg = _ratio(c["tp"], c["tp"] + c["fp"] + c["fn"], None)
    iou_bg = _ratio(c["tn"], c["tn"] + c["fp"] + c["fn"], None)
    defined = [v for v in (iou_bg, iou_fg) if v is not None]
    per_sample = sample_ious(preds, gts)
    return {
        "miou": float(np.mean(defined)) if defined else None,
        "ciou": iou_fg,
        "giou": float(per_sample.mean()) if len(per_sample) else None,
        "iou_fg": iou_fg,
        "iou_bg": iou_bg,
        "n": len(per_sample),
    }


def change_detection_metrics(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> dict:
    """Changed-class precision, recall, F1, IoU and overall accuracy, pixels pooled over the dataset.

    P = TP / (TP + FP), R = TP / (TP + FN), F1 = 2PR / (P + R), IoU = TP / (TP + FP + FN),
    OA = (TP + TN) / all. A zero denominator gives 0.0 (as scikit-learn's ``zero_division=0``),
    so an all-background prediction scores P = R = F1 = IoU = 0.
    """
    c = binary_confusion(preds, gts)
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "iou": _ratio(tp, tp + fp + fn),
        "oa": _ratio(tp + tn, tp + fp + fn + tn, None),
        "n": len(preds),
    }


# --------------------------------------------------------------------------------------------
# Parse failures
# --------------------------------------------------------------------------------------------

def parse_failure_rate(failed: Iterable[bool]) -> float | None:
    """Fraction of True entries (answers that failed to parse); None for no answers."""
    failed = [bool(f) for f in failed]
    return _ratio(sum(failed), len(failed), None)


def majority(values: Iterable[str]) -> str:
    """The most frequent value; ties go to the first seen (deterministic)."""
    counts = Counter(values)
    if not counts:
        raise ValueError("majority of an empty sequence")
    best = max(counts.values())
    return next(v for v in counts if counts[v] == best)


def mean_or_none(values: Iterable[float]) -> float | None:
    """Mean of `values` as a float, None when there are none."""
    values = list(values)
    return float(np.mean(values)) if values else None


def flatten_metrics(metrics: Mapping, prefix: str = "") -> dict:
    """Nested dict of numbers -> ``{"a/b": v}`` (helper for reports)."""
    out = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_metrics(v, key + "/"))
        else:
            out[key] = v
    return out
