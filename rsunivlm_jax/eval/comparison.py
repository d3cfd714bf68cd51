"""Two models compared task by task on held-out data: numbers, learning checks and a markdown report.

Everything is read back from the evaluation directories that `evaluate` writes (one per model and
task: ``metrics.json`` with the image-blind baselines, ``predictions.jsonl``); nothing is
recomputed except the yes/no VQA accuracy (presence + comparison questions, from the predictions;
for a baseline, from its per-type accuracies). A control model (the same model with shuffled
images) may be added: its drop against the real images is what the model reads from the image.

Each headline number gets a 95% bootstrap interval over the records, and each difference (model
A - model B, real - shuffled images) a paired one (`rsunivlm_jax.eval.intervals`), from the
per-record outcomes in predictions.jsonl; evaluations written before those outcomes were kept
get None ("n/a" in the report).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from rsunivlm_jax import tasks
from rsunivlm_jax.eval import intervals

# Headline metric of each task (compared between the models and against the baselines).
HEADLINE = {"cls": "accuracy", "vqa": "acc/yes_no", "vg": "acc@0.5", "ref": "CIDEr", "cap": "CIDEr",
            "ccd": "CIDEr", "seg": "miou", "cd": "f1"}
YES_NO_TYPES = intervals.YES_NO_TYPES
CLEAR_MARGIN = 0.10  # "clearly above" a baseline: at least this much higher (absolute)
BOOTSTRAP = {"level": 0.95, "n_boot": 1000, "seed": 0}


def load_evaluation(eval_dir) -> dict:
    """One evaluation directory: ``{"task", "result", "baselines", "meta", "samples"}`` from its
    metrics.json and predictions.jsonl, with ``acc/yes_no`` added for VQA (the model's and each
    baseline's). ``samples``: each prediction's ``score`` with its ``id`` (None without the file)."""
    eval_dir = Path(eval_dir)
    data = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    (task, result), = data["results"].items()
    baselines = data.get("baselines", {}).get(task, {})
    samples = None
    if (eval_dir / "predictions.jsonl").is_file():
        lines = (eval_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        preds = [json.loads(line) for line in lines if line.strip()]
        samples = [{**p.get("score", {}), "id": p.get("id")} for p in preds]
    if task == "vqa":
        if samples is None:
            raise ValueError(f"{eval_dir / 'predictions.jsonl'}: missing (needed for the yes/no VQA accuracy)")
        yes_no = [p for p in preds if p.get("score", {}).get("question_type") in YES_NO_TYPES]
        result["metrics"]["acc/yes_no"] = (float(np.mean([bool(p["score"]["correct"]) for p in yes_no]))
                                           if yes_no else None)
        counts = result.get("details", {}).get("count_per_type", {})
        for b in baselines.values():
            accs = [(b["metrics"].get(f"acc/{t}"), counts.get(t, 0)) for t in YES_NO_TYPES]
            n = sum(c for v, c in accs if v is not None)
            b["metrics"]["acc/yes_no"] = sum(v * c for v, c in accs if v is not None) / n if n else None
    return {"task": task, "result": result, "baselines": baselines, "meta": data.get("meta", {}), "samples": samples}


def _num(v) -> float | None:
    return None if v is None else float(v)


def learning_checks(evals: Mapping[str, dict]) -> list[dict]:
    """Whether one model learned each skill, on held-out data: ``[{"check", "value", "reference",
    "passed", "rule"}]``. `evals`: ``{task: load_evaluation(...)}``."""
    def metric(task, name):
        return _num(evals[task]["result"]["metrics"].get(name))

    def base(task, bname, name):
        return _num(evals[task]["baselines"].get(bname, {}).get("metrics", {}).get(name))

    checks = []

    def add(name, value, ref, ok, rule):
        checks.append({"check": name, "value": value, "reference": ref, "passed": bool(ok), "rule": rule})

    cls_v = metric("cls", "accuracy")
    cls_b = max(base("cls", "majority_class", "accuracy") or 0, base("cls", "chance", "accuracy") or 0)
    add("classification accuracy", cls_v, cls_b, cls_v is not None and cls_v >= cls_b + CLEAR_MARGIN,
        f">= best of majority class / chance + {CLEAR_MARGIN}")
    vqa_v, vqa_b = metric("vqa", "acc/yes_no"), base("vqa", "always_yes", "acc/yes_no")
    add("yes/no VQA accuracy", vqa_v, vqa_b, vqa_v is not None and vqa_b is not None and vqa_v >= vqa_b + CLEAR_MARGIN,
        f">= always-yes + {CLEAR_MARGIN}")
    vg_v, vg_b = metric("vg", "acc@0.5"), base("vg", "centre_box", "acc@0.5")
    add("grounding Acc@0.5", vg_v, vg_b, vg_v is not None and vg_v > (vg_b or 0.0), "> centre box")
    seg_v, seg_b = metric("seg", "miou"), base("seg", "all_background", "miou")
    add("segmentation mIoU", seg_v, seg_b, seg_v is not None and seg_v > (seg_b or 0.0), "> all background")
    cd_v = metric("cd", "f1")
    add("change detection F1", cd_v, 0.0, cd_v is not None and cd_v > 0.0, "> 0")
    worst = max((metric(t, "parse_failure_rate") or 0.0) for t in ("vg", "seg", "cd"))
    add("structured answers parse (vg, seg, cd)", worst, 0.0, worst == 0.0, "parse-failure rate = 0")
    return checks


def headline_interval(ev: Mapping, *, level: float = BOOTSTRAP["level"], n_boot: int = BOOTSTRAP["n_boot"],
                      seed: int = BOOTSTRAP["seed"], where: str = "") -> dict | None:
    """``{"metric", "value", "low", "high"}`` of one `load_evaluation`'s headline metric (value from
    metrics.json, interval from its samples); None when the samples lack the per-record outcomes."""
    task, samples = ev["task"], ev.get("samples")
    name = HEADLINE[task]
    value = ev["result"]["metrics"].get(name)
    if samples is None:
        return None
    try:
        again = intervals.headline_from_samples(task, samples)
        bounds = intervals.bootstrap_interval(task, samples, n_boot=n_boot, seed=seed, level=level)
    except intervals.MissingStatistics:
        return None
    _check_same(value, again, f"{where}{task} {name}")
    low, high = bounds if bounds is not None else (None, None)
    return {"metric": name, "value": _num(value), "low": low, "high": high}


def paired_interval(ev_a: Mapping, ev_b: Mapping, *, level: float = BOOTSTRAP["level"],
                    n_boot: int = BOOTSTRAP["n_boot"], seed: int = BOOTSTRAP["seed"], where: str = "") -> dict | None:
    """``{"metric", "difference", "low", "high"}``: headline(a) - headline(b) over the same records
    with its paired bootstrap interval; None when the samples lack the per-record outcomes."""
    task = ev_a["task"]
    name = HEADLINE[task]
    if ev_a.get("samples") is None or ev_b.get("samples") is None:
        return None
    try:
        d = intervals.paired_difference(task, ev_a["samples"], ev_b["samples"], n_boot=n_boot, seed=seed, level=level)
    except intervals.MissingStatistics:
        return None
    except ValueError as e:
        raise ValueError(f"{where}{task}: {e}") from None
    for ev in (ev_a, ev_b):
        _check_same(ev["result"]["metrics"].get(name), intervals.headline_from_samples(task, ev["samples"]),
                    f"{where}{task} {name}")
    return {"metric": name, **d}


def _check_same(reported, recomputed, what: str) -> None:
    if (reported is None) != (recomputed is None) or (
            reported is not None and not np.isclose(float(reported), recomputed, rtol=1e-9, atol=1e-12)):
        raise ValueError(f"{what}: metrics.json says {reported!r} but its predictions give {recomputed!r}")


def compare(evals: Mapping[str, Mapping[str, dict]], control: Mapping[str, dict] | None = None, *,
            level: float = BOOTSTRAP["level"], n_boot: int = BOOTSTRAP["n_boot"],
            seed: int = BOOTSTRAP["seed"]) -> dict:
    """The numbers of two models (the first two keys of `evals`, each ``{task: load_evaluation}``),
    their differences, the baselines (from the first model's files), the learning checks, and an
    optional control model (``{task: load_evaluation}``), with bootstrap intervals: ``intervals``
    holds each model's headline interval and the paired one of A - B per task; each control task
    its own ``interval`` and the real - shuffled ``drop`` with ``reads_image`` (the drop's interval
    lies above 0)."""
    a, b = list(evals)[:2]
    boot = {"level": level, "n_boot": n_boot, "seed": seed}
    order = [t for t in tasks.TASKS_BY_ANSWER if t in evals[a]]
    comparison = {}
    for task in order:
        ma, mb = evals[a][task]["result"]["metrics"], evals[b][task]["result"]["metrics"]
        comparison[task] = {
            name: {a: va, b: mb.get(name),
                   "difference": None if va is None or mb.get(name) is None else float(va) - float(mb[name])}
            for name, va in ma.items() if va is None or (isinstance(va, (int, float)) and not isinstance(va, bool))}
    ctrl = {}
    for t, c in (control or {}).items():
        drop = paired_interval(evals[a][t], c, where=f"{a} vs control, ", **boot) if t in evals[a] else None
        if drop is not None:
            drop["reads_image"] = None if drop["low"] is None else bool(drop["low"] > 0)
        ctrl[t] = {"n": c["result"]["n"], "metrics": c["result"]["metrics"],
                   "interval": headline_interval(c, where="control ", **boot), "drop": drop}
    return {
        "models": {m: {t: {"n": evals[m][t]["result"]["n"], "metrics": evals[m][t]["result"]["metrics"]}
                       for t in order} for m in (a, b)},
        "baselines": {t: {name: bl["metrics"] for name, bl in evals[a][t]["baselines"].items()} for t in order},
        "comparison": comparison,
        "intervals": {
            "method": "percentile bootstrap over records; differences paired (same resampled records on both sides)",
            **boot,
            "models": {m: {t: headline_interval(evals[m][t], where=f"{m} ", **boot) for t in order} for m in (a, b)},
            "difference": {t: paired_interval(evals[a][t], evals[b][t], where=f"{a} - {b}, ", **boot) for t in order},
        },
        "learning_checks": {m: learning_checks(evals[m]) for m in (a, b)},
        "control_shuffled_images": ctrl,
    }


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float, np.floating)):
        return f"{float(v):.{digits}f}"
    return str(v)


def signed(v) -> str:
    return "n/a" if v is None else f"{round(float(v), 3) + 0.0:+.3f}"


def with_interval(value, interval: Mapping | None, sign: bool = False) -> str:
    """``0.583 [0.515, 0.650]`` (``+0.050 [-0.020, 0.120]`` with `sign`); ``[n/a]`` without an interval."""
    f = signed if sign else fmt
    if value is None:
        return "n/a"
    if not interval or interval.get("low") is None:
        return f"{f(value)} [n/a]"
    return f"{f(value)} [{f(interval['low'])}, {f(interval['high'])}]"


def markdown(payload: Mapping, *, title: str, intro: Sequence[str], titles: Mapping[str, str],
             training_rows: Sequence[Sequence] = (), pictures: Mapping[str, str] | None = None,
             timings: Mapping[str, float] | None = None, files: Sequence[str] = ()) -> str:
    """report.md text of a `compare` payload. intro: paragraphs under the title; titles: display
    name of each model; training_rows: (run, steps, final train loss, final held-out loss, median
    step s); pictures: {"curves": path, "gallery": path} relative to the report; files: listed last."""
    a, b = list(payload["models"])[:2]
    ta, tb = titles.get(a, a), titles.get(b, b)
    pictures = pictures or {}
    lines = [f"# {title}", ""]
    for paragraph in intro:
        lines += [paragraph, ""]
    boot = payload.get("intervals") or {}
    per_model, diffs = boot.get("models", {}), boot.get("difference", {})
    level = f"{100 * boot.get('level', BOOTSTRAP['level']):g}%"
    lines += ["## Headline metrics (held-out)", "",
              f"| Task | Metric | {ta} | {tb} | {ta} - {tb} | Baseline | n |", "|---|---|---|---|---|---|---|"]
    for task, rows in payload["comparison"].items():
        name = HEADLINE[task]
        c = rows.get(name, {})
        bl = "; ".join(f"{fmt(v.get(name))} ({bn})" for bn, v in payload["baselines"][task].items()
                       if v.get(name) is not None) or "-"
        cells = [with_interval(c.get(m), per_model.get(m, {}).get(task)) for m in (a, b)]
        lines.append(f"| {task} | {name} | {cells[0]} | {cells[1]} | "
                     f"{with_interval(c.get('difference'), diffs.get(task), sign=True)} | "
                     f"{bl} | {payload['models'][a][task]['n']} |")
    lines += ["", f"Brackets: {level} bootstrap intervals over the held-out records "
              f"({boot.get('n_boot', BOOTSTRAP['n_boot'])} resamples, seed {boot.get('seed', BOOTSTRAP['seed'])}); "
              f"the difference's is paired (both models on the same resampled records), so a difference "
              f"whose interval excludes 0 is resolved at that level. n/a: the evaluation files lack "
              f"the per-record outcomes."]
    lines += ["", "## Learning checks (held-out)", "", f"| Check | Rule | {ta} | {tb} | Reference |", "|---|---|---|---|---|"]
    for ca, cb in zip(payload["learning_checks"][a], payload["learning_checks"][b]):
        mark = lambda c: f"{fmt(c['value'])} {'PASS' if c['passed'] else 'FAIL'}"  # noqa: E731
        lines.append(f"| {ca['check']} | {ca['rule']} | {mark(ca)} | {mark(cb)} | {fmt(ca['reference'])} |")
    lines += ["", "## All metrics", "", f"| Task | Metric | {ta} | {tb} | {ta} - {tb} | Baselines |",
              "|---|---|---|---|---|---|"]
    for task, rows in payload["comparison"].items():
        for name, c in rows.items():
            if c[a] is None and c[b] is None:
                continue
            bl = "; ".join(f"{fmt(v.get(name))} ({bn})" for bn, v in payload["baselines"][task].items()
                           if name in v) or "-"
            lines.append(f"| {task} | {name} | {fmt(c[a])} | {fmt(c[b])} | {signed(c['difference'])} | {bl} |")
    lines += ["", "`acc/yes_no` is VQA accuracy over presence and comparison questions (the yes/no ones); "
              "`acc/count` are counting questions, for which always-yes scores 0.", ""]
    if training_rows:
        lines += ["## Training", ""]
        if "curves" in pictures:
            lines += [f"![loss curves]({pictures['curves']})", ""]
        lines += ["| Run | Steps | Final train loss | Final held-out loss | Median step (s) |", "|---|---|---|---|---|"]
        for run, steps, train_loss, heldout, step_s in training_rows:
            lines.append(f"| {run} | {steps} | {fmt(train_loss, 4)} | {fmt(heldout, 4)} | {fmt(step_s)} |")
        lines.append("")
    if "gallery" in pictures:
        lines += [f"## Gallery ({ta} predictions on held-out images)", "", f"![gallery]({pictures['gallery']})", "",
                  "Red: prediction; green: ground truth. Per-task example pictures of each model: "
                  "`examples.png` in each evaluation directory.", ""]
    ctrl = payload.get("control_shuffled_images") or {}
    if ctrl:
        lines += ["## Control: does the answer depend on the image?", "",
                  f"The {ta} model again, with each held-out record's image(s) replaced by another record's "
                  "(same task; question and ground truth unchanged). What survives the swap comes from the "
                  "text alone (question and label priors); the drop is what the model reads from the image.", "",
                  f"| Task | Metric | {ta}, real images | {ta}, images shuffled | Drop [{level}] | Reads the image |",
                  "|---|---|---|---|---|---|"]
        for task in payload["comparison"]:
            if task not in ctrl:
                continue
            name = HEADLINE[task]
            real, shuf = payload["models"][a][task]["metrics"].get(name), ctrl[task]["metrics"].get(name)
            drop = None if real is None or shuf is None else float(real) - float(shuf)
            verdict = (ctrl[task].get("drop") or {}).get("reads_image")
            verdict = "n/a" if verdict is None else ("yes" if verdict else "not shown")
            lines.append(f"| {task} | {name} | {fmt(real)} | {fmt(shuf)} | "
                         f"{with_interval(drop, ctrl[task].get('drop'), sign=True)} | {verdict} |")
        lines += ["", f"Reads the image: yes when the drop's paired {level} bootstrap interval (same records, "
                  "real vs shuffled images) lies above 0.", ""]
    if timings:
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        lines += ["## Wall time", "", f"{sum(timings.values()):.0f} s in total ({parts}); "
                  "re-running the command reuses every finished stage.", ""]
    if files:
        lines += ["## Files", ""] + [f"- `{f}`" for f in files] + [""]
    return "\n".join(lines)
