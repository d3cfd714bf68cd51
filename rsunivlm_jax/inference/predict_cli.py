"""`rsunivlm-predict`: one prompt on one or two images -> printed answer + a PNG of it.

    rsunivlm-predict --checkpoint DIR --image A.png [--image B.png] --prompt "[VG] where is the bridge?" \\
        [--out result.png] [--constrained]

Pictures: boxes drawn on the image ([VG], and the question box of [REF]), the mask overlaid
([SEG]), before | after | change map ([SEG] with two images), else the image(s) titled with the
answer. Counterpart: the Gradio demo `app.py` of the reference (greedy, eos `<|im_end|>`,
`skip_special_tokens=True`).

Checkpoints: a converted / exported directory (`meta.json` + `params/`, read with
`rsunivlm_jax.checkpoint_io.load_pretrained`; `save_checkpoint` here writes the same layout) or a
training work directory (`rsunivlm_jax.train.checkpoint`, latest step). Decoding settings come from
the checkpoint's `generation_config.json` when present (the released one may set a repetition
penalty even for greedy decoding, SPEC 2.12); decoding is greedy unless --do-sample, as in the demo
(`do_sample=False`), whatever the file says. The penalty counts generated tokens only, as LLaVA's
`generate(inputs_embeds=...)` does (`--penalize-prompt` switches to transformers' input_ids mode).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rsunivlm_jax import tasks
from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.inference import constrained as C
from rsunivlm_jax.inference import sampling
from rsunivlm_jax.inference.generate import decode_answers, default_max_new_tokens, generate
from rsunivlm_jax.router import route


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class LoadedModel:
    """Everything inference needs from a checkpoint directory."""

    config: ModelConfig
    graphdef: Any
    params: dict
    tokenizer: Any
    sampling: sampling.SamplingParams
    eos_ids: tuple[int, ...]
    generation_config: dict | None
    path: Path


def save_checkpoint(directory: str | os.PathLike, config: ModelConfig, params: dict, *,
                    generation_config: dict | None = None, tokenizer_dir: str | os.PathLike | None = None,
                    source: str = "rsunivlm_jax.inference.predict_cli.save_checkpoint") -> Path:
    """Writes params + config in the converted-checkpoint layout that `checkpoint_io.load_pretrained`
    reads (`meta.json`, `params/`, optional `generation_config.json` and tokenizer files)."""
    from rsunivlm_jax import checkpoint_io
    d = Path(directory)
    if (d / checkpoint_io.PARAMS_DIR).exists():
        raise FileExistsError(f"{d / checkpoint_io.PARAMS_DIR} already exists")
    d.mkdir(parents=True, exist_ok=True)
    checkpoint_io.save_params(d / checkpoint_io.PARAMS_DIR, params)
    meta = {"format": checkpoint_io.FORMAT, "model_config": config.to_dict(), "parts": sorted(params),
            "source": {"writer": source}}
    (d / checkpoint_io.META_FILE).write_text(json.dumps(meta, indent=2, default=list))
    if generation_config is not None:
        (d / checkpoint_io.GENERATION_CONFIG).write_text(json.dumps(generation_config, indent=2))
    if tokenizer_dir is not None:
        for name in checkpoint_io.TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy(Path(tokenizer_dir) / name, d / name)
    return d


def _default_tokenizer(config: ModelConfig, path):
    if config.decoder.vocab_size < 151646:
        raise ValueError(f"{path}: no tokenizer files, and the model's vocabulary ({config.decoder.vocab_size} "
                         "rows) is not the Qwen2 one; add tokenizer files (vocab.json + merges.txt) to it")
    from rsunivlm_jax.data.tokenizer import load_default_tokenizer
    return load_default_tokenizer(config.image_token_id)


def load_model(path: str | os.PathLike, *, mesh=None, rules=None, **sampling_overrides) -> LoadedModel:
    """Loads a converted / exported checkpoint or a training work directory (see the module docstring).

    `sampling_overrides` (SamplingParams fields, None = keep) win over generation_config.json.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    from rsunivlm_jax import checkpoint_io
    if (path / checkpoint_io.META_FILE).is_file():
        pre = checkpoint_io.load_pretrained(path, mesh=mesh, rules=rules)
        missing = {"vision", "connector", "decoder"} - set(pre.parts)
        if missing:
            raise ValueError(f"{path}: checkpoint holds only {list(pre.parts)}; a full model also needs "
                             f"{sorted(missing)}")
        config, graphdef, params, tokenizer, gen = pre.config, pre.graphdef, pre.params, pre.tokenizer, \
            pre.generation_config
    else:
        from rsunivlm_jax.functional import abstract_init
        from rsunivlm_jax.train import checkpoint as train_ckpt
        meta = train_ckpt.read_source_meta(str(path))
        if "model_config" not in meta:
            raise ValueError(f"{path}: checkpoint meta has no model_config")
        config = ModelConfig.from_dict(meta["model_config"])
        graphdef, abstract = abstract_init(config, mesh=mesh, rules=rules)
        params, _ = train_ckpt.load_params(str(path), abstract)
        tokenizer = checkpoint_io.load_tokenizer(path, config.image_token_id)
        gen_path = path / checkpoint_io.GENERATION_CONFIG
        gen = json.loads(gen_path.read_text(encoding="utf-8")) if gen_path.is_file() else None
    if tokenizer is None:
        tokenizer = _default_tokenizer(config, path)
    overrides = dict(penalize_prompt=False)
    overrides.update({k: v for k, v in sampling_overrides.items() if v is not None})
    sp, extras = sampling.from_generation_config(gen or {}, **overrides)
    eos = extras.get("eos_token_ids", tuple(config.eos_token_ids))
    return LoadedModel(config, graphdef, params, tokenizer, sp, tuple(eos), gen, path)


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------

def prompt_message(prompt: str, num_images: int) -> str:
    """The user message: image placeholders are prefixed unless the prompt already has them."""
    n = prompt.count(tasks.IMAGE_PLACEHOLDER)
    if n not in (0, num_images):
        raise ValueError(f"prompt has {n} {tasks.IMAGE_PLACEHOLDER} placeholders for {num_images} images")
    return prompt if n else tasks.image_prefix(num_images) + prompt


def predict(model: LoadedModel, images: Sequence, prompt: str, *, constrained: bool = False,
            max_new_tokens: int | None = None, grid_size: int = tasks.DEFAULT_GRID_SIZE, label: str | None = None,
            rng: int = 0) -> dict:
    """Answer of one prompt on PIL `images` (1 or 2). Returns dict(answer, task, granularity, tokens)."""
    from rsunivlm_jax.data import preprocess
    if not 1 <= len(images) <= 2:
        raise ValueError(f"expected one or two images, got {len(images)}")
    cfg = model.config
    message = prompt_message(prompt, len(images))
    enc = model.tokenizer.encode_conversation([{"from": "human", "value": message}], add_generation_prompt=True)
    pixels = preprocess.preprocess_images(list(images), cfg.vision.image_size, len(images))[None]
    task = tasks.task_of_prompt(message, len(images))
    budget = max_new_tokens or default_max_new_tokens(task, grid_size)
    constraint = None
    if constrained:
        constraint = C.for_prompts(model.tokenizer, cfg.decoder.vocab_size, [message], grid_size=grid_size,
                                   eos_ids=model.eos_ids, labels=[label])
        if constraint is None:
            print(f"note: --constrained has no effect on {task or 'untagged'} prompts "
                  "(only [VG] and [SEG])", file=sys.stderr)
    g = route(message)
    out = generate(model.graphdef, model.params, enc.input_ids[None], None, pixels, [g], max_new_tokens=budget,
                   eos_ids=model.eos_ids, sampling_params=model.sampling, rng=rng, constraint=constraint,
                   config=cfg)
    answer = decode_answers(model.tokenizer, out, model.eos_ids)[0]
    return {"answer": answer, "task": task, "granularity": g, "tokens": int(out.lengths[0]),
            "max_new_tokens": budget, "constrained": constraint is not None}


def pixel_boxes(boxes, width: int, height: int, units: str = "0-100") -> list[tuple[int, int, int, int]]:
    """Integer pixel boxes at least one pixel wide and high (zero-area answers are drawn as lines)."""
    import math
    px = tasks.boxes_to_pixels(boxes, width, height) if units == "0-100" and len(boxes) else boxes
    out = []
    for x1, y1, x2, y2 in px:
        x1, x2 = sorted((float(x1), float(x2)))
        y1, y2 = sorted((float(y1), float(y2)))
        x1, y1 = math.floor(x1), math.floor(y1)
        out.append((x1, y1, max(math.ceil(x2), x1 + 1), max(math.ceil(y2), y1 + 1)))
    return out


def draw_boxes(image, boxes, units: str = "0-100", **kwargs):
    """`rsunivlm_jax.eval.render.draw_boxes` of `pixel_boxes` (safe for zero-area boxes)."""
    from rsunivlm_jax.eval import render as R
    w, h = image.size
    return R.draw_boxes(image, pixel_boxes(boxes, w, h, units), units="pixels", **kwargs)


def render(images: Sequence, prompt: str, answer: str, task: str | None, *,
           grid_size: int = tasks.DEFAULT_GRID_SIZE):
    """The picture of an answer (PIL image); see the module docstring."""
    from rsunivlm_jax.eval import render as R
    if task == "vg":
        return draw_boxes(images[0], tasks.parse_boxes(answer))
    if task == "ref":
        box = tasks.parse_ref_box(prompt)
        return draw_boxes(images[0], [box] if box else [], labels=[answer[:40]])
    if task in ("seg", "cd"):
        grid, _ = tasks.decode_mask(answer, grid_size)
        if task == "cd" and len(images) == 2:
            return R.change_map_panel(images[0], images[1], grid)
        return R.overlay_mask(images[-1], grid)
    panels = [(answer[:60] if i == len(images) - 1 else f"image {i + 1}", img) for i, img in enumerate(images)]
    return R.compose_gallery(panels, columns=len(panels))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rsunivlm-predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="converted/exported checkpoint or training work directory")
    p.add_argument("--image", action="append", required=True, help="image file; give twice for change tasks "
                   "(before, after)")
    p.add_argument("--prompt", required=True, help='e.g. "[VG] where is the bridge?"')
    p.add_argument("--out", default="prediction.png", help="PNG to write (default: prediction.png)")
    p.add_argument("--constrained", action="store_true", help="grammar-constrained [VG] boxes / [SEG] masks")
    p.add_argument("--label", help="[SEG] class for --constrained (default: taken from the prompt)")
    p.add_argument("--grid-size", type=int, default=tasks.DEFAULT_GRID_SIZE, help="mask grid (24 for RSUniVLM)")
    p.add_argument("--max-new-tokens", type=int, help="default: per task")
    p.add_argument("--do-sample", action="store_true",
                   help="sample (with generation_config.json's temperature / top-k / top-p unless given); "
                        "default greedy, as the reference demo")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float, help="default: generation_config.json, else 1.0")
    p.add_argument("--penalize-prompt", action="store_true", default=None,
                   help="repetition penalty also counts prompt tokens (transformers input_ids mode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print a JSON line instead of the bare answer")
    args = p.parse_args(argv)
    if len(args.image) > 2:
        p.error("at most two --image")
    from rsunivlm_jax.data import preprocess
    try:
        images = [preprocess.open_image(path) for path in args.image]
    except preprocess.ImageDecodeError as e:
        p.error(str(e))
    model = load_model(args.checkpoint, do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                       penalize_prompt=args.penalize_prompt)
    result = predict(model, images, args.prompt, constrained=args.constrained, max_new_tokens=args.max_new_tokens,
                     grid_size=args.grid_size, label=args.label, rng=args.seed)
    picture = render(images, args.prompt, result["answer"], result["task"], grid_size=args.grid_size)
    from rsunivlm_jax.eval.render import save_png
    out = save_png(picture, args.out)
    result["picture"] = str(out)
    print(json.dumps(result) if args.json else result["answer"])
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
