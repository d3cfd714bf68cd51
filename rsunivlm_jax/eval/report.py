"""metrics.json and a markdown report from `rsunivlm_jax.eval.scoring` results.

Inputs are the plain dicts of `score_task` (``{task: result}``) and `trivial_baselines`
(``{task: {baseline_name: {"metrics": ...}}}``). The markdown table has one row per (task, metric):
``| Task | Metric | Model | Baselines |`` with each baseline as ``value (name)``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def to_jsonable(obj):
    """Numpy scalars / arrays -> Python; NaN and inf -> None; tuples -> lists (for json.dump)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def format_value(value) -> str:
    """Table cell: floats with 4 decimals, None as ``n/a``, everything else as str."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if not math.isfinite(float(value)) else f"{float(value):.4f}"
    return str(value)


def _is_number(v) -> bool:
    return v is None or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool))


def markdown_report(results: Mapping[str, Mapping], baselines: Mapping[str, Mapping] | None = None, *,
                    title: str = "RSUniVLM evaluation", notes: Sequence[str] = ()) -> str:
    """Markdown text: a title, notes, and the (task, metric, model, baselines) table.

    Rows follow each task's metric order; a note per task records n and, for caption tasks, the
    caption-metric mode (official / Java-free).
    """
    baselines = baselines or {}
    lines = [f"# {title}", ""]
    for note in notes:
        lines.append(f"- {note}")
    for task, res in results.items():
        details = res.get("details", {}) or {}
        extra = f"; captions: {details['caption_mode']} ({details.get('caption_note', '')})" \
            if "caption_mode" in details else ""
        lines.append(f"- `{task}`: n = {res.get('n', 'n/a')}{extra}")
    lines += ["", "| Task | Metric | Model | Baselines |", "|---|---|---|---|"]
    for task, res in results.items():
        task_baselines = baselines.get(task, {}) or {}
        for metric, value in (res.get("metrics") or {}).items():
            if not _is_number(value):
                continue
            cells = [f"{format_value(b.get('metrics', {}).get(metric))} ({name})"
                     for name, b in task_baselines.items() if metric in (b.get("metrics") or {})]
            lines.append(f"| {task} | {metric} | {format_value(value)} | {'; '.join(cells) or '-'} |")
    return "\n".join(lines) + "\n"


def write_report(out_dir, results: Mapping[str, Mapping], baselines: Mapping[str, Mapping] | None = None, *,
                 title: str = "RSUniVLM evaluation", notes: Sequence[str] = (), meta: Mapping | None = None,
                 include_samples: bool = False) -> dict[str, Path]:
    """Writes ``metrics.json`` and ``report.md`` into `out_dir`; returns their paths.

    metrics.json: ``{"meta": meta, "results": {task: result}, "baselines": {...}}``; per-sample
    lists (``samples``) are dropped unless `include_samples`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = {t: {k: v for k, v in r.items() if include_samples or k != "samples"} for t, r in results.items()}
    payload = {"meta": dict(meta or {}), "results": kept, "baselines": dict(baselines or {})}
    json_path = out_dir / "metrics.json"
    json_path.write_text(json.dumps(to_jsonable(payload), indent=2, sort_keys=True, allow_nan=False) + "\n")
    md_path = out_dir / "report.md"
    md_path.write_text(markdown_report(results, baselines, title=title, notes=notes))
    return {"metrics_json": json_path, "report_md": md_path}
