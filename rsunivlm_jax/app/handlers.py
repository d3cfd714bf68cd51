"""The page's request handlers, without Gradio: uploads -> checked request -> streamed updates.

Counterpart: `bot_streaming`, `draw_box` and `parse_output_string` of the reference demo's `app.py`.
Differences: bad uploads and wrong image counts give a one-line message instead of an exception,
parse problems of the answer are listed instead of swallowed, and the text streams as the tokens
are generated (`rsunivlm_jax.app.engine`).
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
import warnings
from typing import Any, Iterator, Sequence

from PIL import Image

from rsunivlm_jax import tasks
from rsunivlm_jax.app.engine import EXPERT_NAMES, Decoding, Engine, Progress
from rsunivlm_jax.data import preprocess
from rsunivlm_jax.data.synthetic import CHANGE_CLASSES, SCENE_CLASSES
from rsunivlm_jax.inference import constrained as C

MAX_PIXELS = 50_000_000          # uploads above this are refused from the header, before decoding
MAX_MESSAGE_CHARS = 2000
MAX_NEW_TOKENS = 4096
MAX_GRID_SIZE = 64
DISPLAY_MIN, DISPLAY_MAX = 320, 768  # the drawn picture's longer side

# Task selector: (label, key). Keys are `tasks.TASKS` names plus "free" (no tag).
TASK_CHOICES = (
    ("Caption [CAP]", "cap"),
    ("Visual question [VQA]", "vqa"),
    ("Scene class [CLS]", "cls"),
    ("Grounding: find a box [VG]", "vg"),
    ("Region caption: describe a box [REF]", "ref"),
    ("Segmentation mask [SEG]", "seg"),
    ("Change caption, 2 images [CCD]", "ccd"),
    ("Change mask, 2 images [SEG]", "cd"),
    ("Free text (no tag: image-level expert)", "free"),
)
TEMPLATES = {
    "cap": tasks.make_prompt("cap"),
    "vqa": tasks.make_prompt("vqa", question="How many buildings are there in the image?"),
    "cls": tasks.make_prompt("cls", classes=list(SCENE_CLASSES)),
    "vg": tasks.make_prompt("vg", expression="Where is the red building at the top left?"),
    "ref": tasks.make_prompt("ref", box="[10, 10, 40, 40]"),
    "seg": tasks.make_prompt("seg", label="water"),
    "ccd": tasks.make_prompt("ccd"),
    "cd": tasks.make_prompt("cd", label=CHANGE_CLASSES[0]),
    "free": "What is in this image?",
}
ONE_IMAGE_TAGS = ("[CAP]", "[VQA]", "[CLS]", "[VG]", "[REF]")


class RequestError(ValueError):
    """A request the page answers with a message instead of an answer."""


@dataclasses.dataclass
class Update:
    """What the page shows: answer text, drawn picture (None: unchanged while streaming), the info
    line and the messages (input problems, parse problems of the answer)."""

    answer: str
    picture: Image.Image | None
    info: str
    notes: str
    done: bool = False


def template(task: str | None) -> str:
    """The message the task selector puts in the message box."""
    return TEMPLATES.get(task or "free", TEMPLATES["free"])


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

def _upload_path(value: Any) -> tuple[str | None, str | None]:
    """(path, name shown to the user) of an image input: None, a path, or Gradio's file dict."""
    if value is None:
        return None, None
    if isinstance(value, (str, os.PathLike)):
        return str(value), os.path.basename(str(value))
    if isinstance(value, dict):
        path = value.get("path")
        return (str(path) if path else None), value.get("orig_name") or (os.path.basename(str(path)) if path else None)
    raise RequestError(f"unsupported image input of type {type(value).__name__}")


def read_image(value: Any, which: str, *, max_pixels: int = MAX_PIXELS) -> Image.Image | None:
    """The uploaded image as RGB, None when absent; RequestError naming `which` and the reason."""
    if isinstance(value, Image.Image):
        return preprocess.to_rgb(value)
    path, name = _upload_path(value)
    if path is None:
        return None
    label = f"{which} ({name})"
    try:
        with warnings.catch_warnings():  # oversized images are refused below, before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return preprocess.open_image(path, max_pixels=max_pixels, name=label)
    except preprocess.ImageDecodeError as e:
        if e.reason == "image_too_large":
            raise RequestError(str(e)) from None
        if e.reason == "missing_image":
            raise RequestError(f"{label}: the upload did not arrive; upload it again") from None
        raise RequestError(f"{label}: not a readable image file (PNG, JPEG, TIFF, ...)") from None


def check_request(images: Sequence[Image.Image], message: str) -> str:
    """The message stripped; RequestError when it is empty or the image count does not fit its tag."""
    message = (message or "").strip()
    if not message:
        raise RequestError("the message is empty: pick a task or type a question")
    if len(message) > MAX_MESSAGE_CHARS:
        raise RequestError(f"the message has {len(message)} characters; the limit is {MAX_MESSAGE_CHARS}")
    n = len(images)
    if n == 0:
        raise RequestError("no image: upload one (two for change tasks)")
    tag = tasks.leading_tag(message)
    if tag == "[CCD]" and n != 2:
        raise RequestError("[CCD] compares two images (before, after); upload a second image")
    if tag in ONE_IMAGE_TAGS and n != 1:
        raise RequestError(f"{tag} takes one image, got two; remove the second image or pick a two-image task")
    return message


def decoding(constrained=False, do_sample=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
             max_new_tokens=0, grid_size=tasks.DEFAULT_GRID_SIZE, seed=0) -> Decoding:
    """`Decoding` from the page's raw values; RequestError naming a value out of range."""
    def number(name, v, kind, lo, hi):
        try:
            x = kind(float(v))
        except (TypeError, ValueError):
            raise RequestError(f"{name} must be a number, got {v!r}") from None
        if not lo <= x <= hi:
            raise RequestError(f"{name} must be in [{lo}, {hi}], got {v!r}")
        return x

    return Decoding(
        constrained=bool(constrained), do_sample=bool(do_sample),
        temperature=number("temperature", temperature, float, 1e-3, 100.0),
        top_k=number("top-k", top_k, int, 0, 1_000_000),
        top_p=number("top-p", top_p, float, 1e-6, 1.0),
        repetition_penalty=number("repetition penalty", repetition_penalty, float, 1e-3, 100.0),
        max_new_tokens=number("max new tokens", max_new_tokens, int, 0, MAX_NEW_TOKENS),
        grid_size=number("mask grid", grid_size, int, 1, MAX_GRID_SIZE),
        seed=number("seed", seed, int, 0, 2**31 - 1))


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------

def display_copy(image: Image.Image) -> Image.Image:
    """`image` scaled so its longer side is in [DISPLAY_MIN, DISPLAY_MAX] (nearest when enlarging)."""
    w, h = image.size
    side = max(w, h)
    if DISPLAY_MIN <= side <= DISPLAY_MAX:
        return image.copy()
    scale = (DISPLAY_MIN if side < DISPLAY_MIN else DISPLAY_MAX) / side
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS)


def _listed_classes(message: str) -> list[str]:
    m = re.search(r"following classes:\s*(.+?)\s*\.?\s*$", message, re.S | re.I)
    return [c.strip().lower() for c in m.group(1).split(",") if c.strip()] if m else []


def problems(message: str, answer: str, task: str | None, grid_size: int) -> list[str]:
    """What does not parse in the answer (or in the question, for [REF]), one line each."""
    out: list[str] = []
    if task == "vg":
        try:
            C.parse_boxes_strict(answer)
        except ValueError as e:
            out.append(f"boxes: {e}")
        if not tasks.parse_boxes(answer):
            out.append("boxes: no [x1, y1, x2, y2] box in the answer; nothing drawn")
    elif task == "ref" and tasks.parse_ref_box(message) is None:
        out.append("question: no [x1, y1, x2, y2] box in the [REF] question; nothing drawn")
    elif task in ("seg", "cd"):
        out += [f"mask: {p}" for p in tasks.decode_mask(answer, grid_size)[1]]
    elif task == "cls":
        listed = _listed_classes(message)
        if listed and answer.strip().rstrip(".").lower() not in listed:
            out.append(f"class: {answer.strip()[:40]!r} is not one of the listed classes")
    return out


def picture(images: Sequence[Image.Image], message: str, answer: str, task: str | None,
            grid_size: int) -> Image.Image:
    """The answer drawn: boxes ([VG]; the question's box for [REF]), the mask overlaid ([SEG]),
    before | after | change map (two-image [SEG]), else the image(s) alone."""
    import uuid

    from rsunivlm_jax.eval import render as R
    shown = [display_copy(im) for im in images]
    drawn = R.answer_picture(task, shown, answer, prompt=message, grid_size=grid_size, min_side=0)
    # Gradio caches an output picture under the hash of its PNG bytes and rewrites that file in
    # place, so two requests with the same picture would share one file, one truncating it while
    # the other's is served (gradio-app/gradio#8878). A per-response PNG text chunk (Gradio keeps
    # text metadata) gives every response its own cache file.
    drawn.info["rsunivlm-response"] = uuid.uuid4().hex
    return drawn


def info_line(p: Progress) -> str:
    """``expert 1 (region-level) · 12 tokens · 0.84 s (first token 0.31 s) · constrained``."""
    name = EXPERT_NAMES[p.granularity] if 0 <= p.granularity < len(EXPERT_NAMES) else "?"
    parts = [f"task {p.task or 'untagged'}", f"expert {p.granularity} ({name})", f"{p.tokens} tokens"]
    if p.done:
        first = f" (first token {p.first_token_seconds:.2f} s)" if p.first_token_seconds is not None else ""
        parts.append(f"{p.seconds:.2f} s{first}")
    parts.append("constrained" if p.constrained else "unconstrained")
    return " · ".join(parts)


# --------------------------------------------------------------------------------------------
# The request
# --------------------------------------------------------------------------------------------

def respond(engine: Engine, image1: Any, image2: Any, message: str, settings: Decoding, *,
            min_interval: float = 0.0) -> Iterator[Update]:
    """Streams the page's updates for one request; problems become a message, never an exception.

    Partial answers come at most every `min_interval` seconds (the last one always comes): each
    update costs the page a few milliseconds, more than a token of a small model.
    """
    try:
        images = [im for im in (read_image(image1, "image 1"), read_image(image2, "image 2")) if im is not None]
        message = check_request(images, message)
        task = tasks.task_of_prompt(message, len(images))
        yield Update("", None, "", "")  # clears the previous answer
        last, shown = None, time.perf_counter()
        for last in engine.answer(images, message, settings):
            if not last.done and time.perf_counter() - shown >= min_interval:
                yield Update(last.text, None, info_line(last), "")
                shown = time.perf_counter()
    except (RequestError, ValueError) as e:
        yield Update("", None, "", str(e), done=True)
        return
    notes = problems(message, last.text, task, settings.grid_size)
    if not last.finished:
        notes.append(f"stopped at the token limit ({last.max_new_tokens}) before the model ended the answer")
    yield Update(last.text, picture(images, message, last.text, task, settings.grid_size), info_line(last),
                 "\n".join(notes), done=True)
