"""Per-request latency of the page's engine on this machine, one held-out example per task.

    python -m rsunivlm_jax.app.latency --checkpoint runs/demo/gmoe [--budget task|reference] [--repeats 3]

Each request is answered as the page answers it (greedy, constrained [VG] / [SEG], streamed); the
first request of a shape compiles its programs ("cold"), the next ones reuse them ("warm", median).
`--budget task` gives each task the page's default token budget (a trained model stops at its end
token); `--budget reference` stops at the length of the example's reference answer, so that a model
with random weights, which never stops by itself, produces answers of realistic length.
Prints one JSON line per task, then one with the checkpoint, load time and the machine's load.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

from rsunivlm_jax import cli_utils

TASK_ORDER = ("cap", "vqa", "cls", "vg", "ref", "seg", "ccd", "cd")


def measure(engine, settings, *, budget: str = "task", repeats: int = 3) -> list[dict]:
    """One dict per task: tokens, cold and warm seconds, warm time to the first token, warm ms per token."""
    import dataclasses

    from PIL import Image

    from rsunivlm_jax import tasks
    from rsunivlm_jax.data import synthetic
    rows = []
    samples = {}
    for task in TASK_ORDER:
        index = 1 if tasks.TASK_NUM_IMAGES[task] == 2 else 0
        if index not in samples:
            scene = synthetic.scene_for(settings.seed, settings.split, index, settings.image_size)
            samples[index] = synthetic.make_sample(scene, index, settings.split, settings.grid_size)
        sample = samples[index]
        record = next(r for r in sample.records if r["task"] == task)
        rels = record["image"] if isinstance(record["image"], list) else [record["image"]]
        images = [Image.fromarray(sample.images[r]) for r in rels]
        message = tasks.strip_placeholders(record["conversations"][0]["value"])
        limit = 0
        if budget == "reference":
            limit = len(engine.model.tokenizer.encode(record["conversations"][1]["value"])) + 1  # + end token
        decoding = dataclasses.replace(engine.defaults(settings.grid_size), max_new_tokens=limit)
        runs = []
        for _ in range(1 + repeats):
            last = None
            for last in engine.answer(images, message, decoding):
                pass
            runs.append(last)
        warm = runs[1:]
        rows.append({
            "task": task, "tokens": warm[-1].tokens, "cold_s": round(runs[0].seconds, 3),
            "warm_s": round(statistics.median(r.seconds for r in warm), 4),
            "warm_first_token_s": round(statistics.median(r.first_token_seconds for r in warm), 4),
            "warm_ms_per_token": round(1000 * statistics.median(
                (r.seconds - r.first_token_seconds) / max(1, r.tokens - 1) for r in warm), 2)})
    return rows


def _run(argv: list[str]) -> int:
    p = cli_utils.ArgumentParser(prog="python -m rsunivlm_jax.app.latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (as rsunivlm-app takes)")
    p.add_argument("--budget", choices=("task", "reference"), default="task",
                   help="token budget: the page's per-task default, or the reference answer's length")
    p.add_argument("--repeats", type=cli_utils.positive_int, default=3, help="warm requests per task (default 3)")
    p.add_argument("--grid-size", type=cli_utils.positive_int, help="mask grid (default: the main job's, else 24)")
    args = p.parse_args(argv)
    from rsunivlm_jax.app import examples as ex
    from rsunivlm_jax.app.engine import Engine
    from rsunivlm_jax.inference.predict import load_model
    try:
        settings = ex.settings_for(args.checkpoint)
        t = time.perf_counter()
        model = load_model(args.checkpoint, do_sample=False)
        load_s = time.perf_counter() - t
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load checkpoint {args.checkpoint}: {cli_utils.one_line(e)}") from e
    if args.grid_size:
        settings = ex.SyntheticSettings(settings.seed, settings.split, settings.image_size, args.grid_size)
    for row in measure(Engine(model), settings, budget=args.budget, repeats=args.repeats):
        print(json.dumps(row), flush=True)
    print(json.dumps({"checkpoint": Path(args.checkpoint).name, "load_s": round(load_s, 2), "grid": settings.grid_size,
                      "budget": args.budget, "cpus": os.cpu_count(),
                      "load_average": [round(x, 2) for x in os.getloadavg()]}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli_utils.run("latency", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
