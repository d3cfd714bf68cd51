"""Two models compared task by task on held-out data: numbers, learning checks and a markdown report.

Everything is read back from the evaluation directories that `evaluate` writes (one per model and
task: ``metrics.json`` with the image-blind baselines, ``predictions.jsonl``); nothing is
recomputed except the yes/no VQA accuracy (presence + comparison questions, from the predictions;
for a baseline, from its per-type accuracies). A control model (the same model with shuffled
images) may be added: its drop against the real images is what the model reads from the image.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from rsunivlm_jax import tasks

# Headline metric of each task (compared between the models and against the baselines).
HEADLINE = {"cls": "accuracy", "vqa": "acc/yes_no", "vg": "acc@0.5", "ref": "CIDEr", "cap": "CIDEr",
            "ccd": "CIDEr", "seg": "miou", "cd": "f1"}
YES_NO_TYPES = ("presence", "comparison")
CLEAR_MARGIN = 0.10  # "clearly above" a baseline: at least this much higher (absolute)


def load_evaluation(eval_dir) -> dict:
    """One evaluation directory: ``{"task", "result", "baselines", "meta"}`` from its metrics.json,
    with ``acc/yes_no`` added for VQA (the model's and each baseline's)."""
    eval_dir = Path(eval_dir)
    data = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    (task, result), = data["results"].items()
    baselines = data.get("baselines", {}).get(task, {})
    if task == "vqa":
        lines = (eval_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        preds = [json.loads(line) for line in lines if line.strip()]
        yes_no = [p for p in preds if p.get("score", {}).get("question_type") in YES_NO_TYPES]
        result["metrics"]["acc/yes_no"] = (float(np.mean([bool(p["score"]["correct"]) for p in yes_no]))
                                           if yes_no else None)
        counts = result.get("details", {}).get("count_per_type", {})
        for b in baselines.values():
            accs = [(b["metrics"].get(f"acc/{t}"), counts.get(t, 0)) for t in YES_NO_TYPES]
            n = sum(c for v, c in accs if v is not None)
            b["metrics"]["acc/yes_no"] = sum(v * c for v, c in accs if v is not None) / n if n else None
    return {"task": task, "result": result, "baselines": baselines, "meta": data.get("meta", {})}


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


def compare(evals: Mapping[str, Mapping[str, dict]], control: Mapping[str, dict] | None = None) -> dict:
    """The numbers of two models (the first two keys of `evals`, each ``{task: load_evaluation}``),
    their differences, the baselines (from the first model's files), the learning checks, and an
    optional control model (``{task: load_evaluation}``)."""
    a, b = list(evals)[:2]
    order = [t for t in tasks.TASKS_BY_ANSWER if t in evals[a]]
    comparison = {}
    for task in order:
        ma, mb = evals[a][task]["result"]["metrics"], evals[b][task]["result"]["metrics"]
        comparison[task] = {
            name: {a: va, b: mb.get(name),
                   "difference": None if va is None or mb.get(name) is None else float(va) - float(mb[name])}
            for name, va in ma.items() if va is None or (isinstance(va, (int, float)) and not isinstance(va, bool))}
    return {
        "models": {m: {t: {"n": evals[m][t]["result"]["n"], "metrics": evals[m][t]["result"]["metrics"]}
                       for t in order} for m in (a, b)},
        "baselines": {t: {name: bl["metrics"] for name, bl in evals[a][t]["baselines"].items()} for t in order},
        "comparison": comparison,
        "learning_checks": {m: learning_checks(evals[m]) for m in (a, b)},
        "control_shuffled_images": {t: {"n": c["result"]["n"], "metrics": c["result"]["metrics"]}
                                    for t, c in (control or {}).items()},
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
    lines += ["## Headline metrics (held-out)", "",
              f"| Task | Metric | {ta} | {tb} | {ta} - {tb} | Baseline | n |", "|---|---|---|---|---|---|---|"]
    for task, rows in payload["comparison"].items():
        name = HEADLINE[task]
        c = rows.get(name, {})
        bl = "; ".join(f"{fmt(v.get(name))} ({bn})" for bn, v in payload["baselines"][task].items()
                       if v.get(name) is not None) or "-"
        lines.append(f"| {task} | {name} | {fmt(c.get(a))} | {fmt(c.get(b))} | {signed(c.get('difference'))} | "
                     f"{bl} | {payload['models'][a][task]['n']} |")
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
                  f"| Task | Metric | {ta}, real images | {ta}, images shuffled | Drop |", "|---|---|---|---|---|"]
        for task in payload["comparison"]:
            if task not in ctrl:
                continue
            name = HEADLINE[task]
            real, shuf = payload["models"][a][task]["metrics"].get(name), ctrl[task]["metrics"].get(name)
            drop = None if real is None or shuf is None else float(real) - float(shuf)
            lines.append(f"| {task} | {name} | {fmt(real)} | {fmt(shuf)} | {signed(drop)} |")
        lines.append("")
    if timings:
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        lines += ["## Wall time", "", f"{sum(timings.values()):.0f} s in total ({parts}); "
                  "re-running the command reuses every finished stage.", ""]
    if files:
        lines += ["## Files", ""] + [f"- `{f}`" for f in files] + [""]
    return "\n".join(lines)
