"""G-MoE against the same-budget dense model over several seeds: the main job once per seed, then one table.

    python -m rsunivlm_jax.demo_study                          # seeds 0 1 2 in runs/demo_study/seed_<s>
    python -m rsunivlm_jax.demo_study --seeds 0,1,2,3 --reuse runs/demo --set eval.shuffled_control=False

Each seed is a complete main-job run (`rsunivlm_jax.demo`: data, tokenizer, stage 1, G-MoE and
dense stage 2 on the same batches, evaluation) with ``seed`` set, so the data, the initialisation
and the batch order all change; everything else is the main job's config (plus ``--set``). A
finished seed is reused (the main job resumes), and ``--reuse DIR`` takes an existing main-job
workdir as the seed it was run with when its config matches. The table (``study.md``,
``study.json`` in ``--workdir``) gives per task the headline metric of both models on each seed,
the G-MoE - dense difference with its paired 95 % bootstrap interval over the held-out records,
the mean over seeds, and a verdict: "G-MoE better" / "dense better" when every seed's interval is
on that side of zero, otherwise "no clear difference".
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from rsunivlm_jax import fileio, tasks

DEFAULT_WORKDIR = os.path.join("runs", "demo_study")


def seed_workdir(workdir, seed: int, reuse=None, cfg=None) -> Path:
    """Where seed `seed` runs: `reuse` when it holds a main-job run of the same config and seed."""
    if reuse is not None and cfg is not None:
        path = Path(reuse) / "demo_config.json"
        if path.is_file() and json.loads(path.read_text(encoding="utf-8")) == json.loads(cfg.to_json()):
            return Path(reuse)
    return Path(workdir) / f"seed_{seed}"


def seed_row(run_dir) -> dict:
    """Headline numbers of both models of one finished main-job run and the paired difference."""
    from rsunivlm_jax.eval import comparison, intervals
    from rsunivlm_jax.demo import MODELS
    run_dir = Path(run_dir)
    out = {}
    for task in tasks.TASKS_BY_ANSWER:
        ev = {m: comparison.load_evaluation(run_dir / "eval" / m / task) for m in MODELS}
        metric = comparison.HEADLINE[task]
        diff = intervals.paired_difference(task, ev["gmoe"]["samples"], ev["dense"]["samples"],
                                           **comparison.BOOTSTRAP)
        out[task] = {"metric": metric, "n": ev["gmoe"]["result"]["n"],
                     **{m: ev[m]["result"]["metrics"].get(metric) for m in MODELS},
                     "difference": diff["difference"], "low": diff["low"], "high": diff["high"]}
    return out


def verdict(rows: Sequence[dict]) -> str:
    if rows and all(r["low"] is not None and r["low"] > 0 for r in rows):
        return "G-MoE better"
    if rows and all(r["high"] is not None and r["high"] < 0 for r in rows):
        return "dense better"
    return "no clear difference"


def summarise(per_seed: dict[int, dict]) -> dict:
    seeds = sorted(per_seed)
    table = {}
    for task in tasks.TASKS_BY_ANSWER:
        rows = [per_seed[s][task] for s in seeds]
        g = np.array([r["gmoe"] for r in rows], float)
        d = np.array([r["dense"] for r in rows], float)
        table[task] = {"metric": rows[0]["metric"], "n": rows[0]["n"], "seeds": {s: per_seed[s][task] for s in seeds},
                       "gmoe_mean": float(g.mean()), "dense_mean": float(d.mean()),
                       "difference_mean": float((g - d).mean()),
                       "difference_sd": float((g - d).std(ddof=1)) if len(seeds) > 1 else None,
                       "verdict": verdict(rows)}
    return {"seeds": seeds, "tasks": table}


def _num(x, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    head = "| Task | Metric | n | " + " | ".join(f"seed {s}: G-MoE / dense, difference [95% CI]" for s in seeds)
    lines = [head + " | Mean G-MoE | Mean dense | Mean difference (sd) | Verdict |",
             "|---|---|---|" + "---|" * len(seeds) + "---|---|---|---|"]
    for task, t in summary["tasks"].items():
        cells = []
        for s in seeds:
            r = t["seeds"][s]
            ci = ("[no per-record results]" if r["low"] is None or r["high"] is None
                  else f"[{r['low']:+.3f}, {r['high']:+.3f}]")
            cells.append(f"{_num(r['gmoe'])} / {_num(r['dense'])}, {_num(r['difference'], '+.3f')} {ci}")
        sd = "" if t["difference_sd"] is None else f" ({t['difference_sd']:.3f})"
        lines.append(f"| {task} | {t['metric']} | {t['n']} | " + " | ".join(cells) +
                     f" | {t['gmoe_mean']:.3f} | {t['dense_mean']:.3f} | {t['difference_mean']:+.3f}{sd} | {t['verdict']} |")
    return "\n".join(lines)


def run_study(seeds: Sequence[int], workdir=DEFAULT_WORKDIR, *, overrides: Sequence[str] = (), variant: str = "full",
              reuse=None, progress: bool = True) -> dict:
    from rsunivlm_jax import demo
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    per_seed, dirs, t0 = {}, {}, time.perf_counter()
    for k, seed in enumerate(seeds):
        cfg = demo.load_config(variant, [*overrides, f"seed={int(seed)}"])
        run_dir = seed_workdir(workdir, seed, reuse, cfg)
        print(f"[study {k + 1}/{len(seeds)}] seed {seed} in {run_dir}  (elapsed {time.perf_counter() - t0:.0f} s)",
              flush=True)
        demo.run(cfg, run_dir, progress=progress)
        per_seed[int(seed)] = seed_row(run_dir)
        dirs[int(seed)] = os.path.relpath(run_dir, workdir)
    summary = summarise(per_seed)
    summary["runs"] = dirs
    summary["overrides"] = list(overrides)
    text = ("# G-MoE against the same-budget dense model over seeds\n\n"
            f"`python -m rsunivlm_jax.demo_study --seeds {','.join(map(str, seeds))}"
            f"{''.join(f' --set {o}' for o in overrides)}`. Per seed: both models' headline metric on the held-out "
            "records and the paired 95 % bootstrap interval of the difference.\n\n" + markdown(summary) + "\n")
    fileio.atomic_write_text(workdir / "study.md", text)
    fileio.atomic_write_json(workdir / "study.json", summary, sort_keys=True)
    print(text, flush=True)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    from rsunivlm_jax import cli_utils
    from rsunivlm_jax.train import config_lib
    parser = cli_utils.ArgumentParser(prog="rsunivlm-demo-study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR)
    parser.add_argument("--variant", default="full", choices=config_lib.DEMO_VARIANTS)
    parser.add_argument("--reuse", help="an existing main-job workdir to use for the seed it was run with")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true")

    def body(args):
        a = parser.parse_args(args)
        try:
            seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--seeds {a.seeds!r}: expected comma-separated integers") from None
        if len(seeds) < 1 or len(set(seeds)) != len(seeds):
            raise ValueError(f"--seeds {a.seeds!r}: expected distinct integers")
        import jax
        cache = Path(a.workdir, "jax_cache").resolve()
        cache.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(cache))
        run_study(seeds, a.workdir, overrides=a.overrides, variant=a.variant, reuse=a.reuse,
                  progress=not a.no_progress)
        return 0
    return cli_utils.run(parser.prog, body, argv)


if __name__ == "__main__":
    sys.exit(main())
