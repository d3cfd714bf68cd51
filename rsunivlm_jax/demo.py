"""The main job: the two-stage RSUniVLM recipe end to end on the built-in synthetic dataset, on one CPU.

    python -m rsunivlm_jax.demo [--workdir runs/demo] [--quick] [--set train.stage1_steps=300 ...]
    bash launch/quickstart.sh demo          # the same, from a fresh checkout (README Quickstart)

Stages (re-running the command resumes: a finished stage is skipped, an interrupted one resumes):

1. data       synthetic train + held-out splits (`rsunivlm_jax.data.synthetic`);
2. tokenizer  a byte-level BPE trained on the training text (`rsunivlm_jax.data.bpe`);
3. stage 1    dense multi-task training of the `tiny` preset (`rsunivlm_jax.train.trainer`);
4. stage 2    up-cycling to three experts and G-MoE training with granularity routing;
5. dense      the baseline: stage 1 trained as many more steps on the same batches, without experts;
6. eval       all eight tasks on the held-out split for both models and the shuffled-image control
              (`rsunivlm_jax.eval.evaluate`), one directory per model and task;
7. report     `loss_curves.png`, `gallery.png`, `report.md`, then `metrics.json`
              (`rsunivlm_jax.eval.comparison`, `rsunivlm_jax.eval.gallery`).

The settings are `rsunivlm_jax.train.config_lib.demo_config` (`configs/demo.py`); each training
stage gets a trainer config from `demo_stage_config`. Every stage writes its outputs first and its
"done" marker last, atomically: the data's `DONE.json`, the tokenizer file, each run's `DONE.json`
(after the trainer's final checkpoint), each evaluation directory (renamed into place when
complete), and the report's `metrics.json`. A process killed at any point and run again ends
with the same `metrics.json`. The workdir keeps the resolved config (`demo_config.json`);
re-running with a different config there is refused. Layout: docs/demo.md.
"""
from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from rsunivlm_jax import fileio, tasks
from rsunivlm_jax.train import config_lib

log = logging.getLogger(__name__)

DEFAULT_WORKDIR = os.path.join("runs", "demo")
MODELS = ("gmoe", "dense")
TITLES = {"gmoe": "G-MoE", "dense": "Dense", "gmoe_shuffled": "G-MoE (images shuffled)"}
# Control: the G-MoE model with each held-out record's image(s) taken from another record of the
# same task. What it still gets right comes from the text alone (question priors).
CONTROL = "gmoe_shuffled"
STAGES = ("data", "tokenizer", "stage1", "gmoe", "dense", "eval", "report")
DONE = "DONE.json"
CONFIG_FILE, TIMINGS_FILE, RUNS_FILE = "demo_config.json", "timings.json", "demo_runs.jsonl"
RUN_LABELS = {"stage1": "stage 1 (dense)", "gmoe": "stage 2 G-MoE", "dense": "dense continuation"}


class DemoError(ValueError):
    """A bad configuration or workdir; the message names it."""


# ---- configuration -----------------------------------------------------------------------------

def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_config(variant: str = "full", overrides: Sequence[str] = (), config_file: str | None = None):
    """The demo config (`config_lib.demo_config(variant)`, or a config file loaded by path) with
    ``key=value`` overrides; DemoError naming the key and value when one does not fit."""
    try:
        cfg = config_lib.load_config_file(config_file) if config_file else config_lib.demo_config(variant)
    except (OSError, ValueError) as e:
        raise DemoError(f"--config {config_file}: {e}") from None
    cfg.lock()  # an override of a field that does not exist is an error, not a new field
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DemoError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            cfg.update_from_flattened_dict({key: _literal(value)})
        except (KeyError, AttributeError):
            raise DemoError(f"--set {key}: unknown config field") from None
        except (TypeError, ValueError) as e:
            raise DemoError(f"--set {key}={value}: {e}") from None
    return cfg


class Paths:
    """Where each artefact lives under the workdir."""

    def __init__(self, workdir, cfg):
        self.workdir = Path(workdir).resolve()
        self.data = self.workdir / "data"
        self.eval_records = self.data / f"{cfg.data.eval_split}.jsonl"
        self.tokenizer_dir = self.workdir / "tokenizer"
        self.tokenizer = self.tokenizer_dir / "tokenizer.json"
        self.eval = self.workdir / "eval"
        self.metrics_json = self.workdir / "metrics.json"

    def run(self, stage: str) -> Path:
        return self.workdir / stage

    def eval_dir(self, model: str, task: str) -> Path:
        return self.eval / model / task

    def rel(self, path) -> str:
        return os.path.relpath(path, self.workdir)


# ---- the pipeline ------------------------------------------------------------------------------

class Demo:
    """Runs (or resumes) the main job in `workdir`."""

    def __init__(self, cfg, workdir, *, progress: bool = True):
        self.cfg, self.paths, self.progress = cfg, Paths(workdir, cfg), progress
        self.actions: dict[str, str] = {}
        self.t0 = time.perf_counter()
        self.tokenizer_vocab: int | None = None

    def _say(self, k: int, text: str) -> None:
        print(f"[demo {k}/{len(STAGES)}] {text}  (elapsed {time.perf_counter() - self.t0:.0f} s)", flush=True)

    def _timings(self) -> dict:
        path = self.paths.workdir / TIMINGS_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def _record_time(self, stage: str, seconds: float, resumed: bool = False) -> None:
        timings = self._timings()
        timings[stage] = round(float(seconds) + (timings.get(stage, 0.0) if resumed else 0.0), 2)
        fileio.atomic_write_json(self.paths.workdir / TIMINGS_FILE, timings, sort_keys=True)

    def check_config(self) -> None:
        """Stores the resolved config; refuses a workdir made with a different one."""
        path, mine = self.paths.workdir / CONFIG_FILE, json.loads(self.cfg.to_json())
        if not path.exists():
            fileio.atomic_write_json(path, mine, sort_keys=True)
            return
        theirs = json.loads(path.read_text(encoding="utf-8"))
        if theirs != mine:
            diff = sorted(_flat_diff(theirs, mine))
            raise DemoError(f"{self.paths.workdir} holds a demo run with a different config (fields: "
                            f"{', '.join(diff[:8])}); use another --workdir or delete this one")

    def prepare_data(self) -> None:
        from rsunivlm_jax.data import synthetic
        d, p = self.cfg.data, self.paths
        want = {"num_train": int(d.num_train), "num_eval": int(d.num_eval), "image_size": int(d.image_size),
                "grid_size": int(d.grid_size), "seed": int(self.cfg.seed)}
        done = p.data / DONE
        if done.exists() and json.loads(done.read_text(encoding="utf-8")) == want:
            self.actions["data"] = "cached"
            return
        t = time.perf_counter()
        for split, num in ((d.train_split, d.num_train), (d.eval_split, d.num_eval)):
            synthetic.write_dataset(str(p.data), int(num), image_size=int(d.image_size), seed=int(self.cfg.seed),
                                    split=split, grid_size=int(d.grid_size), progress=self.progress,
                                    num_workers=int(d.num_workers))
        fileio.atomic_write_json(done, want)
        self.actions["data"] = "generated"
        self._record_time("data", time.perf_counter() - t)

    def prepare_tokenizer(self) -> None:
        from rsunivlm_jax.data import bpe
        from rsunivlm_jax.data.records import load_records
        from rsunivlm_jax.data.synthetic import CHANGE_CLASSES, CLASS_NAMES
        from rsunivlm_jax.data.tokenizer import Tokenizer
        p, c = self.paths, self.cfg
        self.actions["tokenizer"] = "cached"
        if not p.tokenizer.exists():
            t = time.perf_counter()
            recs = load_records(p.data / f"{c.data.train_split}.jsonl", p.data, grid_size=int(c.data.grid_size),
                                check_files=False)
            bpe.train_tokenizer(bpe.corpus_texts(recs), p.tokenizer_dir, vocab_size=int(c.tokenizer.vocab_size),
                                min_frequency=int(c.tokenizer.min_frequency))
            self.actions["tokenizer"] = "trained"
            self._record_time("tokenizer", time.perf_counter() - t)
        vocab = Tokenizer.from_dir(p.tokenizer_dir, image_token_id=0).vocab_size
        bpe.check_tokenizer(Tokenizer.from_dir(p.tokenizer_dir, image_token_id=vocab),
                            sorted(set(CLASS_NAMES) | set(CHANGE_CLASSES)), int(c.data.grid_size))
        print(f"  tokenizer: {vocab} ids ({p.rel(p.tokenizer)})", flush=True)
        self.tokenizer_vocab = vocab

    def stage_config(self, stage: str):
        p = self.paths
        c = config_lib.demo_stage_config(self.cfg, stage, data_dir=str(p.data), tokenizer_dir=str(p.tokenizer_dir),
                                         stage1_dir=str(p.run("stage1")), tokenizer_vocab=self.tokenizer_vocab)
        c.train.progress = self.progress
        return c

    def train_stage(self, stage: str) -> None:
        from rsunivlm_jax.train import checkpoint as ckpt_lib
        from rsunivlm_jax.train import trainer
        run = self.paths.run(stage)
        if (run / DONE).exists():
            self.actions[stage] = "cached"
            return
        c = self.stage_config(stage)
        done = None
        if (run / "checkpoints").is_dir():
            ckpt = ckpt_lib.Checkpointer(str(run / "checkpoints"), read_only=True)
            done = ckpt.latest_step()
            ckpt.close()
        if done is not None:
            print(f"  {stage}: resuming from step {done} of {c.train.steps}", flush=True)
        run.mkdir(parents=True, exist_ok=True)
        # The run directory is a loadable checkpoint: the tokenizer next to the Orbax steps.
        fileio.atomic_write_bytes(run / "tokenizer.json", self.paths.tokenizer.read_bytes())
        t = time.perf_counter()
        summary = trainer.train(c, str(run))
        if summary.status != "completed" or summary.step < int(c.train.steps):
            raise RuntimeError(f"{stage}: training stopped at step {summary.step} ({summary.status}); re-run to resume")
        fileio.atomic_write_json(run / DONE, {"step": summary.step})
        self.actions[stage] = "trained" if done is None else f"resumed from step {done}"
        print(f"  {stage}: step {summary.step}, train loss {summary.train_loss}, held-out loss {summary.eval_loss}",
              flush=True)
        self._record_time(stage, time.perf_counter() - t, resumed=done is not None)

    def evaluate_models(self) -> None:
        from rsunivlm_jax.data.records import load_source
        from rsunivlm_jax.eval.evaluate import EvalOptions, evaluate
        from rsunivlm_jax.inference.predict import load_model
        e, p = self.cfg.eval, self.paths
        options = EvalOptions(batch_size=int(e.batch_size), limit=int(e.per_task),
                              max_new_tokens=int(e.max_new_tokens) or None, constrained=bool(e.constrained),
                              grid_size=int(self.cfg.data.grid_size), max_text_len=int(e.max_prompt_len),
                              caption_mode=str(e.caption_mode), num_examples=int(e.num_examples))
        runs = MODELS + ((CONTROL,) if bool(e.shuffled_control) else ())
        todo = [(m, t) for m in runs for t in tasks.TASKS_BY_ANSWER if not p.eval_dir(m, t).is_dir()]
        if not todo:
            self.actions["eval"] = "cached"
            return
        t0 = time.perf_counter()
        source = load_source(p.eval_records, grid_size=int(self.cfg.data.grid_size), max_images=2)
        loaded = {}  # run -> model (the control reuses the G-MoE model)
        for name, task in todo:
            run = "gmoe" if name == CONTROL else name
            if run not in loaded:
                loaded[run] = load_model(p.run(run))
            records = shuffled_images(source, int(e.per_task)) if name == CONTROL else source
            final = p.eval_dir(name, task)
            partial = final.with_name(final.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
            evaluate(loaded[run], records, source.root, task, options, out_dir=partial, progress=self.progress,
                     title=f"{TITLES[name]} model: {task}", meta={"model": name, "checkpoint": run})
            os.replace(partial, final)  # the evaluation directory appears complete or not at all
        self.actions["eval"] = f"evaluated {len(todo)} (model, task) pairs"
        self._record_time("eval", time.perf_counter() - t0, resumed=len(todo) < len(runs) * len(tasks.TASKS))

    def write_report(self) -> dict:
        """loss_curves.png, gallery.png, report.md, then metrics.json (last, the stage's marker)."""
        from rsunivlm_jax.data.records import load_source
        from rsunivlm_jax.eval import comparison, gallery
        from rsunivlm_jax.eval.render import plot_curves
        from rsunivlm_jax.train.metrics import read_jsonl
        p, cfg = self.paths, self.cfg
        order = tasks.TASKS_BY_ANSWER
        evals = {m: {t: comparison.load_evaluation(p.eval_dir(m, t)) for t in order} for m in MODELS}
        control = ({t: comparison.load_evaluation(p.eval_dir(CONTROL, t)) for t in order}
                   if bool(cfg.eval.shuffled_control) else {})
        payload = comparison.compare(evals, control)

        offset = {"stage1": 0, "gmoe": int(cfg.train.stage1_steps), "dense": int(cfg.train.stage1_steps)}
        series, training, step_s = {}, {}, {}
        for stage in config_lib.DEMO_STAGES:
            train = read_jsonl(str(p.run(stage) / "metrics.jsonl"), "train")
            held = read_jsonl(str(p.run(stage) / "metrics.jsonl"), "eval")
            for split, rows in (("train", train), ("held-out", held)):
                if rows:
                    series[f"{RUN_LABELS[stage]}: {split}"] = [(r["step"] + offset[stage], r["loss"]) for r in rows
                                                               if r.get("loss") is not None]
            times = [r["step_time"] for r in train[1:] if r.get("step_time")]
            step_s[stage] = float(np.median(times)) if times else None
            training[stage] = {"steps": train[-1]["step"] if train else 0,
                               "final_train_loss": train[-1].get("loss") if train else None,
                               "final_heldout_loss": held[-1].get("loss") if held else None,
                               "metrics_file": p.rel(p.run(stage) / "metrics.jsonl")}
        weighting = {"token": "per target token", "sample": "per example", "sqrt": "sqrt-weighted"}
        curves = plot_curves(series, p.workdir / "loss_curves.partial.png", logy=True,
                             title=f"Training loss ({weighting[str(cfg.train.loss_weighting)]})")
        os.replace(curves, p.workdir / "loss_curves.png")
        source = load_source(p.eval_records, grid_size=int(cfg.data.grid_size), max_images=2)
        payload["gallery"] = gallery.write_gallery(
            p.workdir / "gallery.png", {t: p.eval_dir("gmoe", t) for t in order}, source.records, source.root,
            grid_size=int(cfg.data.grid_size), model_title=TITLES["gmoe"])
        payload["gallery"]["path"] = "gallery.png"
        payload["sources"] = {m: {t: p.rel(p.eval_dir(m, t) / "metrics.json") for t in order} for m in MODELS}
        payload["meta"] = {"variant": cfg.variant, "config": json.loads(cfg.to_json()), "models": self._model_sizes(),
                           "training": training, "headline_metrics": comparison.HEADLINE,
                           "eval_n": {t: evals["gmoe"][t]["result"]["n"] for t in order},
                           "caption_mode": {t: evals["gmoe"][t]["result"].get("details", {}).get("caption_mode")
                                            for t in tasks.CAPTION_TASKS}}
        text = comparison.markdown(
            payload, title="RSUniVLM demo: two-stage G-MoE recipe vs a dense model (synthetic data, tiny model)",
            intro=self._intro(payload), titles=TITLES,
            training_rows=[(s, training[s]["steps"], training[s]["final_train_loss"],
                            training[s]["final_heldout_loss"], step_s[s]) for s in config_lib.DEMO_STAGES],
            pictures={"curves": "loss_curves.png", "gallery": "gallery.png"},
            timings={k: t for k in STAGES if (t := self._timings().get(k)) is not None},
            files=[*(src for m in MODELS for src in payload["sources"][m].values()),
                   *(p.rel(p.eval_dir(CONTROL, t) / "metrics.json") for t in payload["control_shuffled_images"]),
                   "metrics.json (all numbers above, with their source files)"])
        fileio.atomic_write_text(p.workdir / "report.md", text)
        from rsunivlm_jax.eval.report import to_jsonable
        fileio.atomic_write_json(p.metrics_json, to_jsonable(payload), sort_keys=True, allow_nan=False)
        return {"report_md": str(p.workdir / "report.md"), "metrics_json": str(p.metrics_json),
                "curves_png": str(p.workdir / "loss_curves.png"), "gallery_png": str(p.workdir / "gallery.png")}

    def _intro(self, payload) -> list[str]:
        cfg, sizes = self.cfg, payload["meta"]["models"]
        g, d = sizes["gmoe"], sizes["dense"]
        modes = {m for m in payload["meta"]["caption_mode"].values() if m}
        return [f"Variant `{cfg.variant}`; {cfg.data.num_train} training scenes ({cfg.data.num_train * len(tasks.TASKS)} "
                f"records, {len(tasks.TASKS)} tasks), {cfg.data.num_eval} held-out scenes; {cfg.data.image_size} px "
                f"images, {cfg.data.grid_size}x{cfg.data.grid_size} mask grid. Stage 1: {cfg.train.stage1_steps} dense "
                f"steps; stage 2: {cfg.train.stage2_steps} steps for the G-MoE model ({cfg.model.num_experts} experts "
                f"up-cycled from stage 1) and, on the same batches, for the dense model. Batch {cfg.train.global_batch}. "
                f"Greedy decoding; constrained decoding for [VG] / [SEG]: {bool(cfg.eval.constrained)}.",
                f"Parameters: G-MoE {g['params']:,} ({g['active_params_per_token']:,} active per token), dense "
                f"{d['params']:,}; vocabulary {d['vocab_rows']} rows (BPE trained on the synthetic text). Training "
                f"loss weighting: `{cfg.train.loss_weighting}` (docs/demo.md). Caption metrics: "
                f"{', '.join(sorted(modes)) or 'n/a'} mode (`rsunivlm_jax.eval.captions`)."]

    def _model_sizes(self) -> dict:
        """Parameter counts of the trained models (from each run's config.json, via `jax.eval_shape`)."""
        import rsunivlm_jax as rs
        from rsunivlm_jax.config import ModelConfig
        out = {}
        for stage in config_lib.DEMO_STAGES:
            config = ModelConfig.from_dict(json.loads((self.paths.run(stage) / "config.json").read_text())["model_config"])
            out[stage] = {"params": rs.param_count(config),
                          "active_params_per_token": rs.param_count(config.replace(gmoe={"num_experts": 1})),
                          "num_experts": config.gmoe.num_experts, "vocab_rows": config.decoder.vocab_size}
        return out

    def run(self) -> dict:
        p, cfg = self.paths, self.cfg
        p.workdir.mkdir(parents=True, exist_ok=True)
        self.check_config()
        print(f"RSUniVLM demo ({cfg.variant}) in {p.workdir}", flush=True)
        self._say(1, f"synthetic data: {cfg.data.num_train} train + {cfg.data.num_eval} held-out scenes "
                     f"({cfg.data.image_size} px, {cfg.data.grid_size}x{cfg.data.grid_size} mask grid)")
        self.prepare_data()
        self._say(2, "tokenizer: byte-level BPE (Qwen2 pre-tokenizer) on the training text")
        self.prepare_tokenizer()
        self._say(3, f"stage 1: dense multi-task training, {cfg.train.stage1_steps} steps")
        self.train_stage("stage1")
        self._say(4, f"stage 2: up-cycle to {cfg.model.num_experts} experts, G-MoE training with granularity "
                     f"routing, {cfg.train.stage2_steps} steps")
        self.train_stage("gmoe")
        self._say(5, f"dense baseline: stage 1 + {cfg.train.stage2_steps} more dense steps (same batches)")
        self.train_stage("dense")
        control = " + the shuffled-image control" if bool(cfg.eval.shuffled_control) else ""
        self._say(6, f"evaluation: {len(tasks.TASKS)} tasks x {len(MODELS)} models{control} on held-out data "
                     f"({cfg.eval.per_task} per task)")
        self.evaluate_models()
        self._say(7, "report")
        t = time.perf_counter()
        files = self.write_report()
        self.actions["report"] = "written"
        self._record_time("report", time.perf_counter() - t)
        wall = time.perf_counter() - self.t0
        runs, _ = fileio.read_jsonl_tolerant(p.workdir / RUNS_FILE) if (p.workdir / RUNS_FILE).exists() else ([], 0)
        fileio.atomic_write_jsonl(p.workdir / RUNS_FILE, [*runs, {"time": time.time(), "wall_s": round(wall, 2),
                                                                 "actions": self.actions}])
        print(f"done in {wall:.0f} s. Report: {files['report_md']}\n  metrics: {files['metrics_json']}\n"
              f"  loss curves: {files['curves_png']}\n  gallery: {files['gallery_png']}", flush=True)
        return {"files": files, "actions": dict(self.actions), "wall_s": wall}


def shuffled_images(source, per_task: int):
    """`source` with the image(s) of each task's first `per_task` records rotated by one among
    those records (record i gets record i+1's image; questions and ground truth unchanged)."""
    from rsunivlm_jax.data.records import RecordSource
    out, by_task = [], {}
    for r in source.records:
        by_task.setdefault(r["task"], []).append(r)
    for recs in by_task.values():
        recs = recs[:per_task]
        for i, r in enumerate(recs):
            other = recs[(i + 1) % len(recs)]  # validated records carry both the relative and resolved paths
            out.append({**r, **{k: other[k] for k in ("image", "images", "image_bytes") if k in other}})
    return RecordSource(f"{source.name}-shuffled-images", source.root, out, source.report)


def _flat_diff(a, b, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return set().union(*(_flat_diff(a.get(k), b.get(k), f"{prefix}{k}.") for k in set(a) | set(b)))
    return set() if a == b else {prefix.rstrip(".")}


# ---- command line ------------------------------------------------------------------------------

def run(cfg, workdir=DEFAULT_WORKDIR, *, progress: bool = True) -> dict:
    """Runs (or resumes) the demo; returns {"files", "actions", "wall_s"}."""
    return Demo(cfg, workdir, progress=progress).run()


def build_parser():
    from rsunivlm_jax import cli_utils
    parser = cli_utils.ArgumentParser(prog="rsunivlm-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help=f"run directory (default {DEFAULT_WORKDIR})")
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer steps (variant 'quick')")
    parser.add_argument("--variant", choices=config_lib.DEMO_VARIANTS, help="variant of the built-in config")
    parser.add_argument("--config", metavar="FILE[:ARG]", help="a config file instead, e.g. configs/demo.py:quick")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.stage1_steps=300 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-compilation-cache", action="store_true",
                        help="do not keep compiled XLA programs in <workdir>/jax_cache (they speed up re-runs)")
    parser.add_argument("--verbose", action="store_true", help="library log messages (INFO)")
    return parser


def _main(args) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's read-only / async notices
    cfg = load_config(args.variant or ("quick" if args.quick else "full"), args.overrides, args.config)
    if not args.no_compilation_cache:
        import jax
        cache = Path(args.workdir, "jax_cache").resolve()
        cache.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(cache))
    run(cfg, args.workdir, progress=not args.no_progress)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`rsunivlm-demo`: bad input (a config field, a workdir with another config) is one line, exit 2."""
    from rsunivlm_jax import cli_utils
    parser = build_parser()
    return cli_utils.run(parser.prog, lambda a: _main(parser.parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
