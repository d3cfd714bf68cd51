"""Does a model read the image? Teacher-forced answer-token accuracy with real against shuffled images.

    python -m rsunivlm_jax.eval.diagnose --checkpoint runs/demo/gmoe --data runs/demo/data/test.jsonl \
        --grid-size 8 --tasks vg,seg,cd --limit 200

For each task the held-out records are run once with their own images and once with every
record's image(s) taken from the next record of the same task (questions and answers unchanged),
teacher-forced: the model sees the true answer so far and predicts the next token. Reported per
task and run, over the answers' tokens (their text and end token, not the chat template around
them): the share predicted exactly (argmax), split into digits (box coordinates, run lengths) and
other tokens, and the mean cross-entropy. Generation compounds
errors; this does not, so a gap here shows what the image contributes token by token, long before
the generated answers improve. Equal accuracies with real and shuffled images mean the answers
come from the text alone (question and label priors).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Mapping, Sequence

import numpy as np

from rsunivlm_jax import tasks


def shuffle_images(records: Sequence[Mapping]) -> list[dict]:
    """Each record with the image(s) of the next record of the same task (the last takes the first's)."""
    by_task: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_task.setdefault(r["task"], []).append(i)
    out = [dict(r) for r in records]
    for idx in by_task.values():
        for k, i in enumerate(idx):
            other = records[idx[(k + 1) % len(idx)]]
            out[i].update({key: other[key] for key in ("image", "images", "image_bytes") if key in other})
    return out


def answer_positions(tokenizer, ids: np.ndarray) -> np.ndarray:
    """True at the tokens of every assistant answer: its text and the `<|im_end|>` that ends it
    (not the template around it: turn markers, role names and newlines between turns)."""
    ids = np.asarray(ids)
    header = tokenizer.encode("assistant\n")
    out = np.zeros(ids.shape, dtype=bool)
    i = 0
    while i < len(ids):
        if ids[i] == tokenizer.im_start_id and list(ids[i + 1:i + 1 + len(header)]) == header:
            j = i + 1 + len(header)
            while j < len(ids) and ids[j] != tokenizer.eos_id:
                out[j] = True
                j += 1
            if j < len(ids):
                out[j] = True
            i = j
        i += 1
    return out


def _token_kinds(tokenizer, ids: np.ndarray) -> np.ndarray:
    """True where a token's text is all digits."""
    return np.array([tokenizer.decode([int(t)]).strip().isdigit() for t in ids], dtype=bool)


def teacher_forced(model, records: Sequence[Mapping], *, batch_size: int = 32, max_text_len: int = 256) -> dict:
    """Answer-token accuracy (all / digits / other) and mean loss of `model` (a `LoadedModel`) on `records`."""
    import jax
    import jax.numpy as jnp

    import rsunivlm_jax as rs
    from rsunivlm_jax.data.pipeline import ExampleSpec, build_example

    cfg, tok = model.config, model.tokenizer
    n_img = max(len(r["images"]) if isinstance(r.get("images"), list) else 1 for r in records)
    spec = ExampleSpec(image_size=cfg.vision.image_size, image_token_id=cfg.image_token_id,
                       tokens_per_image=cfg.tokens_per_image, max_text_len=max_text_len,
                       max_seq_len=max_text_len + n_img * cfg.tokens_per_image, max_images=n_img)
    fwd = jax.jit(lambda p, ids, px, g, am: rs.forward(model.graphdef, p, ids, px, g, am, output="text"))
    hits = {"all": [0, 0], "digit": [0, 0], "other": [0, 0]}
    loss_sum, digit_cache = 0.0, {}
    for start in range(0, len(records), batch_size):
        ex = [build_example(dict(r), tok, spec) for r in records[start:start + batch_size]]
        b = {k: np.stack([e[k] for e in ex]) for k in ex[0]}
        logits = fwd(model.params, jnp.asarray(b["input_ids"]), jnp.asarray(b["pixel_values"]),
                     jnp.asarray(b["granularity"]), jnp.asarray(b["attention_mask"]))
        logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
        ids = b["input_ids"]
        for row in range(len(ex)):
            keep = (b["loss_mask"][row] > 0) & answer_positions(tok, ids[row])
            pos = np.flatnonzero(keep)                 # answer tokens; predicted from position - 1
            target = ids[row, pos]
            pred = logp[row, pos - 1].argmax(-1)
            loss_sum -= float(logp[row, pos - 1, target].sum())
            for t in set(target.tolist()) - set(digit_cache):
                digit_cache[t] = bool(_token_kinds(tok, np.array([t]))[0])
            is_digit = np.array([digit_cache[t] for t in target.tolist()], dtype=bool)
            ok = pred == target
            for key, sel in (("all", np.ones_like(ok)), ("digit", is_digit), ("other", ~is_digit)):
                hits[key][0] += int(ok[sel].sum())
                hits[key][1] += int(sel.sum())
    out = {f"acc_{k}": (h / n if n else None) for k, (h, n) in hits.items()}
    out.update(tokens=hits["all"][1], digit_tokens=hits["digit"][1], loss=loss_sum / max(hits["all"][1], 1),
               n=len(records))
    return out


def diagnose(model, records: Sequence[Mapping], task_names: Sequence[str], *, limit: int = 200,
             batch_size: int = 32, max_text_len: int = 256) -> dict:
    """``{task: {"real": teacher_forced(...), "shuffled": ...}}`` over the first `limit` records per task."""
    out = {}
    for task in task_names:
        recs = [r for r in records if r.get("task") == task][:limit]
        if not recs:
            raise ValueError(f"no records of task {task!r}")
        out[task] = {name: teacher_forced(model, rs_, batch_size=batch_size, max_text_len=max_text_len)
                     for name, rs_ in (("real", recs), ("shuffled", shuffle_images(recs)))}
    return out


def markdown(result: Mapping) -> str:
    lines = ["| Task | Answer tokens | Accuracy: real | shuffled | Digits: real | shuffled | Loss: real | shuffled |",
             "|---|---|---|---|---|---|---|---|"]
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for task, r in result.items():
        a, b = r["real"], r["shuffled"]
        lines.append(f"| {task} | {a['tokens']} | {f(a['acc_all'])} | {f(b['acc_all'])} | {f(a['acc_digit'])} | "
                     f"{f(b['acc_digit'])} | {f(a['loss'])} | {f(b['loss'])} |")
    return "\n".join(lines)


def _main(args) -> int:
    from rsunivlm_jax.data.records import load_source
    from rsunivlm_jax.inference.predict import load_model
    task_names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in task_names if t not in tasks.TASKS]
    if bad:
        raise ValueError(f"--tasks: unknown task(s) {bad}; expected some of {list(tasks.TASKS)}")
    model = load_model(args.checkpoint)
    source = load_source(args.data, grid_size=args.grid_size, max_images=2)
    result = diagnose(model, source.records, task_names, limit=args.limit, batch_size=args.batch_size,
                      max_text_len=args.max_text_len)
    print(markdown(result))
    if args.out:
        from rsunivlm_jax import fileio
        fileio.atomic_write_json(args.out, result, sort_keys=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from rsunivlm_jax import cli_utils
    parser = cli_utils.ArgumentParser(prog="rsunivlm-diagnose", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="any checkpoint rsunivlm-predict loads")
    parser.add_argument("--data", required=True, help="held-out records (JSONL)")
    parser.add_argument("--tasks", default=",".join(tasks.TASKS_BY_ANSWER), help="comma-separated tasks")
    parser.add_argument("--limit", type=int, default=200, help="records per task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-text-len", type=int, default=256)
    parser.add_argument("--grid-size", type=int, default=tasks.DEFAULT_GRID_SIZE, help="mask grid of the records")
    parser.add_argument("--out", help="also write the numbers as JSON")
    return cli_utils.run(parser.prog, lambda a: _main(parser.parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
