"""`rsunivlm-eval`: one task's records answered by a checkpoint, scored and reported.

    rsunivlm-eval --checkpoint DIR --task {cls,vqa,vg,ref,cap,seg,ccd,cd} --data SOURCE [--limit N] --out DIR

Writes into --out what `rsunivlm_jax.eval.evaluate.evaluate` writes: ``predictions.jsonl``,
``examples/*.png`` and ``examples.png``, ``report.md`` (with the image-blind baselines of
`scoring.trivial_baselines`) and, last, ``metrics.json``. The data is read and the task's records
found before the model loads. With several devices the batch is split over all of them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from rsunivlm_jax import cli_utils, tasks


def build_parser() -> cli_utils.ArgumentParser:
    p = cli_utils.ArgumentParser(prog="rsunivlm-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="converted checkpoint, training run or step directory")
    p.add_argument("--step", type=cli_utils.non_negative_int, help="step of a training run (default: the latest)")
    p.add_argument("--task", required=True, choices=tasks.TASKS)
    p.add_argument("--data", required=True, help="records: a JSON / JSONL file or a record directory")
    p.add_argument("--split", help="split of a record directory (default: all files)")
    p.add_argument("--limit", type=cli_utils.positive_int, help="evaluate the first N records of the task")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch-size", type=cli_utils.positive_int, default=8,
                   help="rounded up to a multiple of the device count")
    p.add_argument("--caption-mode", default="auto", choices=("auto", "official", "java_free"))
    p.add_argument("--examples", type=cli_utils.non_negative_int, default=4, help="example pictures to write")
    p.add_argument("--max-text-len", type=cli_utils.positive_int, default=512,
                   help="longest prompt in tokens (images excluded)")
    p.add_argument("--devices", default="all", choices=("all", "1"), help="data-parallel over all devices or one")
    p.add_argument("--no-progress", action="store_true")
    cli_utils.add_decoding_flags(p, default_grid_size=tasks.DEFAULT_GRID_SIZE)
    return p


def _mesh(devices: str):
    import jax
    if devices == "1" or jax.device_count() == 1:
        return None
    from rsunivlm_jax.sharding import make_mesh
    return make_mesh((-1,), ("data",))


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from rsunivlm_jax.data.records import load_source
    from rsunivlm_jax.eval.evaluate import EvalOptions, evaluate, select_records
    from rsunivlm_jax.inference.predict import load_model

    source = load_source(args.data, split=args.split, max_images=2, grid_size=args.grid_size, name=args.data)
    select_records(source, source.root, args.task)  # no records of the task: fail before loading the model
    if source.report.skipped:
        print(f"data: {source.report.summary()}", file=sys.stderr)
    model = load_model(args.checkpoint, step=args.step, **cli_utils.sampling_overrides(args))
    mesh = _mesh(args.devices)
    batch_size = args.batch_size
    if mesh is not None:
        model = dataclasses.replace(model, params=jax.device_put(model.params, NamedSharding(mesh, P())))
        batch_size = -(-batch_size // mesh.size) * mesh.size
    options = EvalOptions(batch_size=batch_size, limit=args.limit, max_new_tokens=args.max_new_tokens,
                          constrained=args.constrained, grid_size=args.grid_size, max_text_len=args.max_text_len,
                          caption_mode=args.caption_mode, num_examples=args.examples, seed=args.seed)
    meta = {"checkpoint": str(Path(args.checkpoint).resolve()), "data": str(Path(args.data).resolve()),
            "split": args.split, "limit": args.limit, "argv": argv}
    ev = evaluate(model, source, source.root, args.task, options, mesh=mesh, out_dir=args.out,
                  progress=not args.no_progress, meta=meta)
    print(json.dumps({"task": args.task, "n": ev["result"]["n"], "metrics": ev["result"]["metrics"]}, default=str))
    print(f"wrote {ev['files'].get('metrics_json')} and {ev['files'].get('report_md')}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli_utils.run("rsunivlm-eval", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
