"""One picture of a model's answers across tasks: a panel per task (`render.record_picture`: the
answer drawn on the input with the truth, the question, answer and ground truth as text),
composed into one PNG."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Mapping, Sequence

CELL_SIZE = (400, 290)  # each panel is fitted into this box (W, H)


def write_gallery(path, eval_dirs: Mapping[str, Path], records: Sequence[dict], root, *, grid_size: int,
                  model_title: str = "", columns: int = 4) -> dict:
    """A gallery PNG at `path` (written atomically) with one panel per task of `eval_dirs`
    (``{task: evaluation directory}``, in order); panel k shows the k-th prediction of its task (a
    different scene for each task). Returns the layout (panels, columns, cell size)."""
    from rsunivlm_jax.eval.render import compose_gallery, record_picture
    from rsunivlm_jax.fileio import atomic_write_bytes

    by_id = {r["id"]: r for r in records}
    panels, layout = [], []
    for k, (task, eval_dir) in enumerate(eval_dirs.items()):
        lines = (Path(eval_dir) / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        preds = [json.loads(line) for line in lines if line.strip()]
        pick = preds[min(k, len(preds) - 1)]
        picture = record_picture(by_id[pick["id"]], pick["answer"], root, grid_size=grid_size)
        panels.append((f"{task} ({model_title})" if model_title else task, picture))
        layout.append({"task": task, "id": pick["id"], "answer": pick["answer"]})
    title_height, padding = 18, 4
    image = compose_gallery(panels, columns=columns, cell_size=CELL_SIZE, title_height=title_height, padding=padding)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return {"panels": layout, "columns": columns, "cell_size": list(CELL_SIZE), "title_height": title_height,
            "padding": padding}
