"""Grounding and masks on the easiest sets: trains the main job's model on coloured-square records of
one task only and scores held-out answers with real and with shuffled images (docs/demo.md, "What
blocks selective reading").

    python -m tools.grounding_squares --workdir runs/squares1 --squares 1 --steps 600
    python -m tools.grounding_squares --workdir runs/squares2 --squares 2 --steps 2000
    python -m tools.grounding_squares --workdir runs/masks_seg --task seg --steps 600
    python -m tools.grounding_squares --workdir runs/masks_cd --task cd_compare --steps 600
    python -m tools.grounding_squares --workdir runs/pasted --task cd_pasted --steps 1200
    python -m tools.grounding_squares --workdir runs/cd_after_pasted --task cd_scenes --steps 600 --init runs/pasted/run

`--task vg` (default): `[VG]` boxes; `--squares 1`: one square per image, so only the image has to be
read; `--squares 2`: two squares, the question names one by its colour (text-conditioned selection).
`--task seg | cd_colour | cd_compare`: 8x8 row-RLE masks of cell-aligned squares
(`rsunivlm_jax.data.synthetic.squares.write_square_masks`). Single-image sets (`vg`, `seg`) get one
image slot per example instead of the main job's two (the same model, about 1.3x faster).
`--task cd_scenes`: the main job's own change pairs (its synthetic scenes, change detection only);
`--task cd_pasted`: one square pasted onto each of those scenes
(`rsunivlm_jax.data.synthetic.squares.write_pasted_changes`). `--init RUN` starts from the weights
and the tokenizer of an earlier run (``<workdir>/run`` of this tool) instead of random weights.
Prints and writes ``<workdir>/result.json``: the task's metrics with the real and with the
shuffled images.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


METRICS = {"vg": ("acc@0.5", "mean_iou"), "seg": ("miou", "giou"), "cd": ("f1", "iou")}


def run(workdir, *, squares: int = 1, steps: int = 600, num_train: int = 3000, num_eval: int = 100,
        overrides=(), task: str = "vg", init: str | None = None) -> dict:
    from rsunivlm_jax import demo, fileio
    from rsunivlm_jax.data import bpe
    from rsunivlm_jax.data.records import load_records, load_source
    from rsunivlm_jax.data.synthetic import write_dataset
    from rsunivlm_jax.data.synthetic.squares import write_pasted_changes, write_square_masks, write_squares
    from rsunivlm_jax.data.tokenizer import Tokenizer
    from rsunivlm_jax.eval.evaluate import EvalOptions, evaluate
    from rsunivlm_jax.inference.predict import load_model
    from rsunivlm_jax.train import config_lib, trainer

    work = Path(workdir)
    data, tok, run_dir = work / "data", work / "tokenizer", work / "run"
    kind = "cd" if task.startswith("cd_") else task          # the evaluated task: vg, seg or cd
    record_files = {split: data / (f"pasted_{split}.jsonl" if task == "cd_pasted" else f"{split}.jsonl")
               for split in ("train", "test")}
    if not record_files["test"].is_file():
        for split, n in (("train", num_train), ("test", num_eval)):
            if task == "vg":
                write_squares(data, n, split=split, num_squares=squares)
            elif task in ("cd_scenes", "cd_pasted"):
                write_dataset(str(data), n, image_size=64, split=split, grid_size=8, tasks=("cd",), progress=False)
                if task == "cd_pasted":
                    write_pasted_changes(data, [f"images/{split}_{i:06d}.png" for i in range(n)], n, split=split)
            else:
                write_square_masks(data, n, split=split, kind=task)
    if init is not None:
        tok.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_bytes(tok / "tokenizer.json", (Path(init) / "tokenizer.json").read_bytes())
    elif not (tok / "tokenizer.json").is_file():
        bpe.train_tokenizer(bpe.corpus_texts(load_records(record_files["train"], data, check_files=False)), tok)
    vocab = Tokenizer.from_dir(tok, image_token_id=0).vocab_size
    cfg = demo.load_config("full", [f"train.stage1_steps={steps}", *overrides])
    for name in cfg.data.task_weights:                       # this task only
        cfg.data.task_weights[name] = 1.0 if name == kind else 0.0
    c = config_lib.demo_stage_config(cfg, "stage1", data_dir=str(data), tokenizer_dir=str(tok), stage1_dir="",
                                     tokenizer_vocab=vocab)
    c.data.train, c.data.eval, c.eval.every, c.ckpt.every = str(record_files["train"]), "", 0, steps
    if init is not None:
        c.init.mode, c.init.path = "params", str(init)
    if kind != "cd":                                          # one image per record: one image slot
        per_image = (c.data.max_seq_len - c.data.max_text_len) // c.data.max_images
        c.data.max_images, c.data.max_seq_len = 1, c.data.max_text_len + per_image
    run_dir.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_bytes(run_dir / "tokenizer.json", (tok / "tokenizer.json").read_bytes())
    trainer.train(c, str(run_dir))
    model = load_model(run_dir)
    source = load_source(record_files["test"], grid_size=8, max_images=2)
    options = EvalOptions(batch_size=num_eval, max_new_tokens=24 if kind == "vg" else 256, constrained=True,
                          grid_size=8, num_examples=0)
    out = {"task": task, "squares": squares if task == "vg" else None, "steps": steps, "num_train": num_train,
           "num_eval": num_eval, "init": None if init is None else str(init)}
    for name, records in (("real", source), ("shuffled", demo.shuffled_images(source, num_eval))):
        m = evaluate(model, records, source.root, kind, options, progress=False)["result"]["metrics"]
        out[name] = {k: m[k] for k in METRICS[kind]}
    fileio.atomic_write_json(work / "result.json", out, sort_keys=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--task", default="vg", choices=("vg", "seg", "cd_colour", "cd_compare", "cd_scenes", "cd_pasted"))
    p.add_argument("--squares", type=int, default=1, choices=(1, 2, 3, 4), help="--task vg: squares per image")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--num-train", type=int, default=3000)
    p.add_argument("--num-eval", type=int, default=100)
    p.add_argument("--init", metavar="RUN", help="start from this run's weights and tokenizer (<workdir>/run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="main-job config override, e.g. train.lr=2e-3")
    a = p.parse_args(argv)
    if a.init is not None and not (Path(a.init) / "tokenizer.json").is_file():
        p.error(f"--init {a.init}: not a run directory of this tool (no tokenizer.json)")
    print(json.dumps(run(a.workdir, squares=a.squares, steps=a.steps, num_train=a.num_train, num_eval=a.num_eval,
                         overrides=a.overrides, task=a.task, init=a.init), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
