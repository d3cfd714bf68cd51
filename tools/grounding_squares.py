"""Grounding on the easiest set: trains the main job's model on coloured-square `[VG]` records only
and scores held-out boxes with real and with shuffled images (docs/demo.md, "What blocks selective reading").

    python -m tools.grounding_squares --workdir runs/squares1 --squares 1 --steps 600
    python -m tools.grounding_squares --workdir runs/squares2 --squares 2 --steps 2000

`--squares 1`: one square per image, so only the image has to be read; `--squares 2`: two squares,
the question names one by its colour (text-conditioned selection). Prints and writes
``<workdir>/result.json``: Acc@0.5 and mean IoU with the real and with the shuffled images.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def run(workdir, *, squares: int = 1, steps: int = 600, num_train: int = 3000, num_eval: int = 100,
        overrides=()) -> dict:
    from rsunivlm_jax import demo, fileio
    from rsunivlm_jax.data import bpe
    from rsunivlm_jax.data.records import load_records, load_source
    from rsunivlm_jax.data.synthetic.squares import write_squares
    from rsunivlm_jax.data.tokenizer import Tokenizer
    from rsunivlm_jax.eval.evaluate import EvalOptions, evaluate
    from rsunivlm_jax.inference.predict import load_model
    from rsunivlm_jax.train import config_lib, trainer

    work = Path(workdir)
    data, tok, run_dir = work / "data", work / "tokenizer", work / "run"
    if not (data / "test.jsonl").is_file():
        write_squares(data, num_train, split="train", num_squares=squares)
        write_squares(data, num_eval, split="test", num_squares=squares)
    if not (tok / "tokenizer.json").is_file():
        bpe.train_tokenizer(bpe.corpus_texts(load_records(data / "train.jsonl", data, check_files=False)), tok)
    vocab = Tokenizer.from_dir(tok, image_token_id=0).vocab_size
    cfg = demo.load_config("full", [f"train.stage1_steps={steps}", *overrides])
    for task in cfg.data.task_weights:                       # grounding only
        cfg.data.task_weights[task] = 1.0 if task == "vg" else 0.0
    c = config_lib.demo_stage_config(cfg, "stage1", data_dir=str(data), tokenizer_dir=str(tok), stage1_dir="",
                                     tokenizer_vocab=vocab)
    c.data.eval, c.eval.every, c.ckpt.every = "", 0, steps
    run_dir.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_bytes(run_dir / "tokenizer.json", (tok / "tokenizer.json").read_bytes())
    trainer.train(c, str(run_dir))
    model = load_model(run_dir)
    source = load_source(data / "test.jsonl", grid_size=8, max_images=1)
    options = EvalOptions(batch_size=num_eval, max_new_tokens=24, constrained=True, grid_size=8, num_examples=0)
    out = {"squares": squares, "steps": steps, "num_train": num_train, "num_eval": num_eval}
    for name, records in (("real", source), ("shuffled", demo.shuffled_images(source, num_eval))):
        m = evaluate(model, records, source.root, "vg", options, progress=False)["result"]["metrics"]
        out[name] = {k: m[k] for k in ("acc@0.5", "mean_iou")}
    fileio.atomic_write_json(work / "result.json", out, sort_keys=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--squares", type=int, default=1, choices=(1, 2, 3, 4))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--num-train", type=int, default=3000)
    p.add_argument("--num-eval", type=int, default=100)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="main-job config override, e.g. train.lr=2e-3")
    a = p.parse_args(argv)
    print(json.dumps(run(a.workdir, squares=a.squares, steps=a.steps, num_train=a.num_train, num_eval=a.num_eval,
                         overrides=a.overrides), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
