"""One prompt on one or two images: a loaded model (`load_model`) and its answer (`predict`).

    model = load_model("runs/demo/gmoe")          # any checkpoint `rsunivlm_jax.checkpoints.load` reads
    out = predict(model, [image], "[VG] where is the bridge?", constrained=True)

Counterpart: the reference's Gradio demo `app.py` (ChatML prompt, expert from the tag, greedy
decoding with eos `<|im_end|>`, `skip_special_tokens=True`). Decoding settings come from the
checkpoint's `generation_config.json` when present (the released one may set a repetition penalty
even for greedy decoding); the penalty counts generated tokens only, as LLaVA's
`generate(inputs_embeds=...)` does.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

from rsunivlm_jax import checkpoints, tasks
from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.inference import constrained as C
from rsunivlm_jax.inference import sampling
from rsunivlm_jax.inference.generate import decode_answers, default_max_new_tokens, generate
from rsunivlm_jax.router import route

QWEN2_VOCAB_ROWS = 151646  # ids of the Qwen2 tokenizer with the image token


@dataclasses.dataclass
class LoadedModel:
    """Everything inference needs from a checkpoint."""

    config: ModelConfig
    graphdef: Any
    params: dict
    tokenizer: Any
    sampling: sampling.SamplingParams
    eos_ids: tuple[int, ...]
    generation_config: dict | None
    path: Path


def _default_tokenizer(config: ModelConfig, path):
    if config.decoder.vocab_size < QWEN2_VOCAB_ROWS:
        raise checkpoints.CheckpointError(
            f"{path}: no tokenizer files, and the model's vocabulary ({config.decoder.vocab_size} rows) is not "
            "the Qwen2 one; add tokenizer files (vocab.json + merges.txt) to it")
    from rsunivlm_jax.data.tokenizer import load_default_tokenizer
    return load_default_tokenizer(config.image_token_id)


def load_model(path: str | os.PathLike, *, step: int | None = None, mesh=None, rules=None,
               **sampling_overrides) -> LoadedModel:
    """A full model from any checkpoint (`rsunivlm_jax.checkpoints.load`; `step` of a training run).

    `sampling_overrides` (SamplingParams fields, None = keep) win over generation_config.json.
    """
    ck = checkpoints.load(path, step=step, mesh=mesh, rules=rules)
    missing = {"vision", "connector", "decoder"} - set(ck.parts)
    if missing:
        raise checkpoints.CheckpointError(f"{path}: holds only {list(ck.parts)}; a full model also needs "
                                          f"{sorted(missing)}")
    tokenizer = ck.tokenizer if ck.tokenizer is not None else _default_tokenizer(ck.config, path)
    overrides = dict(penalize_prompt=False)
    overrides.update({k: v for k, v in sampling_overrides.items() if v is not None})
    sp, extras = sampling.from_generation_config(ck.generation_config or {}, **overrides)
    eos = extras.get("eos_token_ids", tuple(ck.config.eos_token_ids))
    return LoadedModel(ck.config, ck.graphdef, ck.params, tokenizer, sp, tuple(eos), ck.generation_config,
                       Path(path))


def prompt_message(prompt: str, num_images: int) -> str:
    """The user message of `prompt` on `num_images` images, checked against them: image placeholders
    are prefixed unless the prompt has one per image, and a task tag must get its number of images
    (`tasks.TASK_NUM_IMAGES`: [CCD] two, two-image [SEG] is change detection, the others one)."""
    if not 1 <= num_images <= 2:
        raise ValueError(f"expected one or two images, got {num_images}")
    n = prompt.count(tasks.IMAGE_PLACEHOLDER)
    if n not in (0, num_images):
        raise ValueError(f"prompt has {n} {tasks.IMAGE_PLACEHOLDER} placeholders for {num_images} "
                         f"image{'s' if num_images > 1 else ''}")
    message = prompt if n else tasks.image_prefix(num_images) + prompt
    task = tasks.task_of_prompt(message, num_images)
    if task is not None and tasks.TASK_NUM_IMAGES[task] != num_images:
        need = tasks.TASK_NUM_IMAGES[task]
        raise ValueError(f"prompt tag {tasks.leading_tag(message)} needs {need} image{'s' if need > 1 else ''}, "
                         f"got {num_images}")
    return message


def mask_label(message: str, label: str | None = None) -> str:
    """The class a constrained [SEG] answer may use: `label`, else the one named in the prompt."""
    if label:
        try:
            return C.check_mask_label(label)
        except ValueError as e:
            raise ValueError(f"--label {label!r}: {e}") from None
    try:
        return C.seg_label_from_prompt(message)
    except ValueError as e:
        raise ValueError(f"constrained [SEG] answer: no class in the prompt ({e})") from None


def check_request(prompt: str, num_images: int, *, constrained: bool = False, label: str | None = None,
                  max_new_tokens: int | None = None) -> tuple[str, str | None]:
    """(user message, task) of a request, every check done before a model is needed."""
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens}: must be at least 1")
    message = prompt_message(prompt, num_images)
    task = tasks.task_of_prompt(message, num_images)
    if constrained and task in tasks.MASK_TASKS:
        mask_label(message, label)
    return message, task


def predict(model: LoadedModel, images: Sequence, prompt: str, *, constrained: bool = False,
            max_new_tokens: int | None = None, grid_size: int = tasks.DEFAULT_GRID_SIZE, label: str | None = None,
            rng: int = 0) -> dict:
    """Answer of one prompt on PIL `images` (1 or 2).

    Returns dict(answer, task, granularity, tokens, max_new_tokens, constrained); `constrained` is
    False when the task has no grammar (only [VG] boxes and [SEG] masks have one).
    """
    from rsunivlm_jax.data import preprocess
    message, task = check_request(prompt, len(images), constrained=constrained, label=label,
                                  max_new_tokens=max_new_tokens)
    cfg = model.config
    enc = model.tokenizer.encode_conversation([{"from": "human", "value": message}], add_generation_prompt=True)
    pixels = preprocess.preprocess_images(list(images), cfg.vision.image_size, len(images))[None]
    budget = max_new_tokens or default_max_new_tokens(task, grid_size)
    constraint = None
    if constrained:
        labels = [mask_label(message, label) if task in tasks.MASK_TASKS else None]
        constraint = C.for_prompts(model.tokenizer, cfg.decoder.vocab_size, [message], grid_size=grid_size,
                                   eos_ids=model.eos_ids, labels=labels)
    g = route(message)
    out = generate(model.graphdef, model.params, enc.input_ids[None], None, pixels, [g], max_new_tokens=budget,
                   eos_ids=model.eos_ids, sampling_params=model.sampling, rng=rng, constraint=constraint,
                   config=cfg)
    answer = decode_answers(model.tokenizer, out, model.eos_ids)[0]
    return {"answer": answer, "task": task, "granularity": g, "tokens": int(out.lengths[0]),
            "max_new_tokens": budget, "constrained": constraint is not None}
