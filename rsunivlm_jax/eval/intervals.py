"""Bootstrap intervals of the headline metrics, from the per-record outcomes of `score_task`.

Every headline metric (`rsunivlm_jax.eval.comparison.HEADLINE`) is a function of per-record
sufficient statistics that `rsunivlm_jax.eval.scoring.score_task(..., return_samples=True)` keeps
in each sample (and `evaluate` in each predictions.jsonl line's ``score``):

* cls ``accuracy``, vg ``acc@0.5``: mean of ``correct``;
* vqa ``acc/yes_no``: ``correct`` over the presence and comparison questions (a ratio: resampled
  records of other types count in neither part);
* ref, cap, ccd ``CIDEr``: mean of the per-record ``cider`` (the idf stays that of the evaluated
  set, as for the point estimate);
* seg ``miou``: mean of foreground and background IoU from the pooled pixel ``tp fp fn tn``;
* cd ``f1``: changed-class F1 from the pooled ``tp fp fn``.

`bootstrap_interval` is the percentile bootstrap over records (resampled with replacement,
``n_boot`` times, numpy generator seeded with ``seed``, so a report is reproducible);
`paired_difference` resamples the same records for both sides, so what the two runs share (the
records' difficulty) cancels. The two sides are aligned by record id: both must hold the same set
of ids (order free); otherwise a ValueError names the ids found on one side only. Resamples whose
metric is undefined (e.g. no yes/no question drawn) are left out.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from rsunivlm_jax.tasks import TASKS

YES_NO_TYPES = ("presence", "comparison")
MEAN_FIELD = {"cls": "correct", "vg": "correct", "ref": "cider", "cap": "cider", "ccd": "cider"}
MASK_FIELDS = ("tp", "fp", "fn", "tn")
_EXAMPLES = 5  # ids quoted in an error message


class MissingStatistics(ValueError):
    """The samples lack a per-record field the task's headline metric needs (e.g. predictions
    written before the field existed)."""


def _field(task: str, samples: Sequence[Mapping], name: str) -> list:
    missing = [str(s.get("id", f"#{i}")) for i, s in enumerate(samples) if s.get(name) is None]
    if missing:
        raise MissingStatistics(f"task {task}: {len(missing)} sample(s) have no {name!r} "
                                f"(e.g. {', '.join(missing[:_EXAMPLES])}); re-score them to get intervals")
    return [s[name] for s in samples]


def statistics(task: str, samples: Sequence[Mapping]) -> np.ndarray:
    """Per-record sufficient statistics, float64 (N, K): the columns the headline metric sums."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if task in MEAN_FIELD:
        return np.asarray(_field(task, samples, MEAN_FIELD[task]), dtype=np.float64).reshape(-1, 1)
    if task == "vqa":
        correct = np.asarray(_field(task, samples, "correct"), dtype=bool)
        yes_no = np.asarray([s.get("question_type") in YES_NO_TYPES for s in samples], dtype=bool)
        return np.stack([correct & yes_no, yes_no], axis=1).astype(np.float64).reshape(-1, 2)
    cols = [_field(task, samples, k) for k in MASK_FIELDS]
    return np.asarray(cols, dtype=np.float64).T.reshape(-1, 4)


def _ratio(num, den, empty):
    """num / den elementwise; `empty` where den == 0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    safe = np.where(den == 0, 1.0, den)
    return np.where(den == 0, empty, num / safe)


def _from_sums(task: str, sums: np.ndarray, n) -> np.ndarray:
    """The headline metric of column sums `sums` (..., K) over `n` records (NaN = undefined)."""
    if task in MEAN_FIELD:
        return _ratio(sums[..., 0], n, np.nan)
    if task == "vqa":
        return _ratio(sums[..., 0], sums[..., 1], np.nan)
    tp, fp, fn, tn = (sums[..., k] for k in range(4))
    if task == "seg":  # metrics.segmentation_metrics: mean of the defined class IoUs
        fg, bg = _ratio(tp, tp + fp + fn, np.nan), _ratio(tn, tn + fp + fn, np.nan)
        return np.where(np.isnan(fg), bg, np.where(np.isnan(bg), fg, (bg + fg) / 2))
    # metrics.change_detection_metrics: zero denominators give 0
    p, r = _ratio(tp, tp + fp, 0.0), _ratio(tp, tp + fn, 0.0)
    return _ratio(2 * p * r, p + r, 0.0)


def headline_from_samples(task: str, samples: Sequence[Mapping]) -> float | None:
    """The task's headline metric from per-record samples; equal to `score_task`'s (None when
    undefined, e.g. no samples)."""
    if task in ("ref", "cap", "ccd"):  # pycocoevalcap's corpus CIDEr is np.mean of the per-image scores
        scores = np.asarray(_field(task, samples, "cider"), dtype=np.float64)
        return float(np.mean(scores)) if len(scores) else None
    stats = statistics(task, samples)
    if task in ("seg", "cd"):  # the formulas of metrics.segmentation_metrics / change_detection_metrics
        tp, fp, fn, tn = (sum(int(s[k]) for s in samples) for k in MASK_FIELDS)
        if task == "seg":
            fg = tp / (tp + fp + fn) if tp + fp + fn else None
            bg = tn / (tn + fp + fn) if tn + fp + fn else None
            defined = [v for v in (bg, fg) if v is not None]
            return float(np.mean(defined)) if defined else None
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        return 2 * p * r / (p + r) if p + r else 0.0
    value = float(_from_sums(task, stats.sum(axis=0), len(stats))) if len(stats) else float("nan")
    return None if np.isnan(value) else value


def _resample_metrics(task: str, stats: Sequence[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """The metric of each side on the same `n_boot` resamples of the records: [(n_boot,), ...]."""
    n = len(stats[0])
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    return [_from_sums(task, s[idx].sum(axis=1), n) for s in stats]


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float] | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _check_level(level: float, n_boot: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot!r}")


def bootstrap_interval(task: str, samples: Sequence[Mapping], n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float] | None:
    """Percentile-bootstrap `level` interval ``(low, high)`` of the task's headline metric over
    the records of `samples` (None when there are no samples)."""
    _check_level(level, n_boot)
    stats = statistics(task, samples)
    if not len(stats):
        return None
    return _percentiles(_resample_metrics(task, [stats], n_boot, seed)[0], level)


def align(samples_a: Sequence[Mapping], samples_b: Sequence[Mapping]) -> list[Mapping]:
    """`samples_b` in the record order of `samples_a`; ValueError naming the ids that are
    duplicated, or present on one side only."""
    ids_a = [str(s.get("id")) for s in samples_a]
    ids_b = [str(s.get("id")) for s in samples_b]
    for name, ids in (("first", ids_a), ("second", ids_b)):
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"record ids repeated in the {name} run: {', '.join(dup[:_EXAMPLES])}")
    only_a, only_b = sorted(set(ids_a) - set(ids_b)), sorted(set(ids_b) - set(ids_a))
    if only_a or only_b:
        parts = [f"{len(ids)} only in the {name} run ({', '.join(ids[:_EXAMPLES])}"
                 f"{', ...' if len(ids) > _EXAMPLES else ''})"
                 for name, ids in (("first", only_a), ("second", only_b)) if ids]
        raise ValueError("a paired comparison needs the same records on both sides: " + "; ".join(parts))
    by_id = dict(zip(ids_b, samples_b))
    return [by_id[i] for i in ids_a]


def paired_difference(task: str, samples_a: Sequence[Mapping], samples_b: Sequence[Mapping], n_boot: int = 1000,
                      seed: int = 0, level: float = 0.95) -> dict:
    """``{"difference", "low", "high"}``: metric(a) - metric(b) and its paired percentile-bootstrap
    `level` interval (each resample draws the same record ids for both). Values are None when
    undefined."""
    _check_level(level, n_boot)
    samples_b = align(samples_a, samples_b)
    va, vb = headline_from_samples(task, samples_a), headline_from_samples(task, samples_b)
    out = {"difference": None if va is None or vb is None else va - vb, "low": None, "high": None}
    if not samples_a:
        return out
    ma, mb = _resample_metrics(task, [statistics(task, samples_a), statistics(task, samples_b)], n_boot, seed)
    interval = _percentiles(ma - mb, level)
    if interval is not None:
        out["low"], out["high"] = interval
    return out
