"""Task formats of RSUniVLM: tags, prompts and answer text for all eight tasks, both directions.

One place that knows the eight tasks: how each is asked and answered, how many images it takes,
which expert it routes to (`TASK_GRANULARITY`), which answers are masks (`MASK_TASKS`) or captions:

* tags and prompt templates (`[CAP] [VQA] [CLS] [VG] [REF] [SEG] [CCD]`; two-image `[SEG]` is change
  detection, task name ``"cd"``); the expert index comes from `rsunivlm_jax.router.route`;
* boxes: pixel boxes <-> ``"[x1, y1, x2, y2]"`` integers on 0-100 relative to the original image
  size (``round(100 * x / W)`` half-up, clipped to [0, 100]); several boxes joined by ``" "``;
  a region inside a ``[REF]`` question;
* masks: full-resolution label / binary masks -> grid (PIL nearest, 24x24 by default) -> row-wise
  run-length text (``"others*21, water*1, others*2"``; rows joined by ``"\\n"``) and back. The
  tolerant decoder never raises and reports problems; the strict one raises `ValueError`;
* change detection: the changed-pixels mask of one class from a pair of label maps.

Reference counterparts: `app.py` of xuliu-cyber/RSUniVLM (`draw_box`, the box regex,
`parse_output_string`) and Text4Seg's `create_refcoco_llava.py` (grid construction).
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

import numpy as np
from rsunivlm_jax.router import route

# --------------------------------------------------------------------------------------------
# Tags, tasks, prompt templates
# --------------------------------------------------------------------------------------------

TAGS = ("[CAP]", "[VQA]", "[CLS]", "[VG]", "[REF]", "[SEG]", "[CCD]")
TASKS = ("cap", "vqa", "cls", "vg", "ref", "seg", "ccd", "cd")
TASK_TAG = {"cap": "[CAP]", "vqa": "[VQA]", "cls": "[CLS]", "vg": "[VG]", "ref": "[REF]",
            "seg": "[SEG]", "ccd": "[CCD]", "cd": "[SEG]"}
TASK_NUM_IMAGES = {"cap": 1, "vqa": 1, "cls": 1, "vg": 1, "ref": 1, "seg": 1, "ccd": 2, "cd": 2}
# Expert index of each task (0 image level, 1 region level, 2 pixel level): the router on its tag.
TASK_GRANULARITY = {task: route(tag) for task, tag in TASK_TAG.items()}
MASK_TASKS = ("seg", "cd")              # answers are row-RLE masks
# The tasks by answer kind (labels, boxes, sentences, masks): the order of reports and of the
# components of a task mixture (`data.pipeline.make_task_mixture`).
TASKS_BY_ANSWER = ("cls", "vqa", "vg", "ref", "cap", "ccd", "seg", "cd")
CAPTION_TASKS = ("cap", "ccd", "ref")   # answers are free text scored with caption metrics
# Colours of drawn answers: the model's answer, the ground truth, and the region a [REF] asks about.
PRED_COLOR, TRUTH_COLOR, REGION_COLOR = (255, 0, 0), (0, 200, 0), (255, 200, 0)
BACKGROUND = "others"
IMAGE_PLACEHOLDER = "<image>"
DEFAULT_GRID_SIZE = 24

# Prompt templates (user text after the image placeholders). Wording from the reference demo
# (`app.py` examples) and the paper's Figure 1.
PROMPT_TEMPLATES = {
    "cap": "[CAP] Describe this image briefly.",
    "vqa": "[VQA] {question}",
    "cls": "[CLS] Classify the given image in one of the following classes: {classes}.",
    "vg": "[VG] {expression}",
    "ref": "[REF] what is {box}?",
    "seg": "[SEG] {label}.",
    "ccd": "[CCD] Please briefly describe the changes in these two images.",
    "cd": "[SEG] Please segment the {label} area that have changed in the second image.",
}

_TAG_RE = re.compile(r"^\s*(\[[A-Za-z_]+\])")


def image_prefix(num_images: int) -> str:
    """Placeholder prefix: ``"<image>\\n"`` or ``"<image> <image>\\n"`` (the reference demo's layout)."""
    if num_images <= 0:
        return ""
    return " ".join([IMAGE_PLACEHOLDER] * num_images) + "\n"


def make_prompt(task: str, **fields) -> str:
    """User text (without placeholders) of `task`, e.g. ``make_prompt("seg", label="water")``.

    ``cls`` takes ``classes`` as a list or a string; ``ref`` takes ``box`` as text or
    ``box_px``/``width``/``height``.
    """
    if task not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if task == "cls" and not isinstance(fields.get("classes", ""), str):
        fields["classes"] = ", ".join(fields["classes"])
    if task == "ref" and "box" not in fields:
        return format_ref_question(fields["box_px"], fields["width"], fields["height"])
    return PROMPT_TEMPLATES[task].format(**fields)


def make_user_message(task: str, num_images: int | None = None, **fields) -> str:
    """Full first user message: placeholders + tagged prompt (what goes into the record)."""
    n = TASK_NUM_IMAGES[task] if num_images is None else num_images
    return image_prefix(n) + make_prompt(task, **fields)


def strip_placeholders(message: str) -> str:
    """The user text with every ``<image>`` placeholder removed and surrounding space stripped."""
    return message.replace(IMAGE_PLACEHOLDER, "").strip()


def leading_tag(message: str) -> str | None:
    """The bracketed word at the start of the text (after placeholders), e.g. ``"[VG]"``, or None.

    Bracketed numbers (a ``[REF]`` box) are not tags.
    """
    m = _TAG_RE.match(strip_placeholders(message))
    return m.group(1) if m else None


def task_of_prompt(message: str, num_images: int = 1) -> str | None:
    """Task name from the tag of a user message; two-image ``[SEG]`` is ``"cd"``. None if untagged."""
    tag = leading_tag(message)
    if tag is None or tag not in TAGS:
        return None
    if tag == "[SEG]" and num_images >= 2:
        return "cd"
    return {v: k for k, v in TASK_TAG.items() if k != "cd"}[tag]


def granularity(message: str) -> int:
    """Expert index of a user message (delegates to `rsunivlm_jax.router.route`)."""
    return route(message)


# --------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------

# Demo regex semantics: every [...] made only of digits, commas, dots and spaces.
_BOX_RE = re.compile(r"\[([\d.,\s]+)\]")


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def _as_box_list(boxes_px) -> list[Sequence[float]]:
    arr = np.asarray(boxes_px, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be [x1, y1, x2, y2] or a list of them, got shape {arr.shape}")
    return [tuple(b) for b in arr]


def box_to_units(box_px: Sequence[float], width: float, height: float) -> tuple[int, int, int, int]:
    """One pixel box -> 0-100 integers: ``round(100 * x / W)`` (half up), clipped to [0, 100]."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    x1, y1, x2, y2 = (float(v) for v in box_px)
    out = []
    for v, s in ((x1, width), (y1, height), (x2, width), (y2, height)):
        if not math.isfinite(v):
            raise ValueError(f"box coordinate is not finite: {box_px}")
        out.append(min(100, max(0, _round_half_up(100.0 * v / s))))
    return tuple(out)


def format_boxes(boxes_px, width: float, height: float) -> str:
    """Pixel box(es) -> ``"[x1, y1, x2, y2]"`` text on 0-100; several boxes joined by ``" "``.

    Counterpart of the inverse of the demo's `draw_box` (`x_pix = x / 100 * W`).
    """
    return " ".join("[{}, {}, {}, {}]".format(*box_to_units(b, width, height))
                    for b in _as_box_list(boxes_px))


def parse_boxes(text: str) -> list[tuple[int, int, int, int]]:
    """Every box in `text` as 0-100 integer tuples; tolerant, never raises.

    Demo semantics: each ``[...]`` made of digits, commas, dots and spaces; lists longer than 4
    numbers are truncated to 4, shorter ones and unparsable numbers are skipped. Values are
    rounded (half up) and clipped to [0, 100].
    """
    if not isinstance(text, str):
        return []
    boxes = []
    for inner in _BOX_RE.findall(text):
        parts = [p.strip() for p in inner.split(",")]
        nums = []
        for p in parts:
            try:
                v = float(p)
            except ValueError:
                nums = None
                break
            if not math.isfinite(v):
                nums = None
                break
            nums.append(v)
        if not nums or len(nums) < 4:
            continue
        boxes.append(tuple(min(100, max(0, _round_half_up(v))) for v in nums[:4]))
    return boxes


def boxes_to_pixels(boxes, width: float, height: float) -> list[tuple[float, float, float, float]]:
    """0-100 boxes -> pixel boxes: ``x / 100 * W``, ``y / 100 * H`` (demo `draw_box`)."""
    out = []
    for b in _as_box_list(boxes):
        x1, y1, x2, y2 = (float(v) for v in b)
        out.append((x1 / 100.0 * width, y1 / 100.0 * height, x2 / 100.0 * width, y2 / 100.0 * height))
    return out


def format_ref_question(box_px: Sequence[float], width: float, height: float) -> str:
    """``"[REF] what is [x1, y1, x2, y2]?"`` for a pixel box."""
    return PROMPT_TEMPLATES["ref"].format(box=format_boxes(box_px, width, height))


def parse_ref_box(question: str) -> tuple[int, int, int, int] | None:
    """The first 0-100 box inside a ``[REF]`` question, or None (the demo's question-side parse)."""
    boxes = parse_boxes(question)
    return boxes[0] if boxes else None


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------

def _to_pil(arr: np.ndarray):
    from PIL import Image  # imported lazily: model-only installs (GPU benches) may lack Pillow
    if arr.dtype == np.bool_:
        return Image.fromarray(arr.astype(np.uint8) * 255, mode="L")
    if arr.dtype == np.uint8:
        return Image.fromarray(arr, mode="L")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"mask must be bool or integer labels, got dtype {arr.dtype}")
    return Image.fromarray(arr.astype(np.int32), mode="I")


def _from_pil(img, dtype) -> np.ndarray:
    out = np.asarray(img)
    if dtype == np.bool_:
        return out > 127
    return out.astype(dtype)


def mask_to_grid(mask: np.ndarray, grid_size: int = DEFAULT_GRID_SIZE) -> np.ndarray:
    """Full-resolution label or bool mask (H, W) -> (grid, grid) by PIL nearest (Text4Seg recipe).

    Keeps the dtype: a bool mask gives a bool grid, a label map a label grid.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    img = _to_pil(mask).resize((grid_size, grid_size), 0)  # 0 = PIL NEAREST
    return _from_pil(img, mask.dtype)


def grid_to_mask(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Grid (g, g) -> full-resolution (height, width) by nearest-neighbour upsampling (PIL nearest)."""
    grid = np.asarray(grid)
    if grid.ndim != 2:
        raise ValueError(f"grid must be 2-D, got shape {grid.shape}")
    img = _to_pil(grid).resize((int(width), int(height)), 0)  # 0 = PIL NEAREST
    return _from_pil(img, grid.dtype)


def _check_label(label: str) -> str:
    label = str(label).strip()
    if not label or any(c in label for c in "*,\n") or label.lower() == BACKGROUND:
        raise ValueError(f"mask label {label!r} must be non-empty, not {BACKGROUND!r}, "
                         "and contain no '*', ',' or newline")
    return label


def _encode_row(names: Iterable[str]) -> str:
    runs = []
    for name in names:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    return ", ".join(f"{n}*{c}" for n, c in runs)


def encode_mask(grid: np.ndarray, label: str) -> str:
    """Bool grid -> row-wise RLE text, e.g. ``"others*21, water*1, others*2"``; rows joined by "\\n".

    Foreground cells are written as `label`, background as ``others``.
    """
    grid = np.asarray(grid)
    if grid.ndim != 2:
        raise ValueError(f"grid must be 2-D, got shape {grid.shape}")
    label = _check_label(label)
    fg = grid.astype(bool)
    return "\n".join(_encode_row(label if v else BACKGROUND for v in row) for row in fg)


def encode_label_grid(grid: np.ndarray, names: dict[int, str]) -> str:
    """Multi-class label grid -> RLE text; ids missing from `names` are background."""
    grid = np.asarray(grid)
    if grid.ndim != 2:
        raise ValueError(f"grid must be 2-D, got shape {grid.shape}")
    checked = {int(k): _check_label(v) for k, v in names.items()}
    return "\n".join(_encode_row(checked.get(int(v), BACKGROUND) for v in row) for row in grid)


def _decode(text, grid_size: int) -> tuple[np.ndarray, list[str]]:
    """Shared decoder: best-effort bool grid and the list of problems found."""
    mask = np.zeros((grid_size, grid_size), dtype=bool)
    problems: list[str] = []
    if not isinstance(text, str):
        return mask, [f"mask text is not a string ({type(text).__name__})"]
    text = text.lower().strip()
    if not text:
        return mask, ["mask text is empty"]
    first_star = text.find("*")
    if first_star < 0:
        return mask, ["no 'label*count' run found"]
    lead = text[:first_star].rfind(":")
    if lead >= 0:
        problems.append(f"lead-in text dropped: {text[:lead + 1]!r}")
        text = text[lead + 1:].strip()
    lines = text.split("\n")
    rows: list[list[bool]] = []
    for li, line in enumerate(lines):
        line = line.strip()
        if not line:
            problems.append(f"line {li}: empty row skipped")
            continue
        row: list[bool] = []
        for run in line.split(","):
            run = run.strip()
            if not run:
                problems.append(f"line {li}: empty run")
                continue
            label, star, count_text = run.rpartition("*")
            label = label.strip()
            if not star or not label:
                problems.append(f"line {li}: run {run[:40]!r} is not 'label*count'")
                continue
            count_text = count_text.strip()
            if not count_text.isdigit() or not count_text.isascii():
                problems.append(f"line {li}: count {count_text[:20]!r} is not a non-negative integer")
                continue
            count = int(count_text[:8]) if len(count_text) <= 8 else grid_size + 1
            if "*" in label:
                problems.append(f"line {li}: label {label[:40]!r} contains '*'")
            room = grid_size + 1 - len(row)  # enough to detect an overlong row
            row.extend([label != BACKGROUND] * max(0, min(count, room)))
        if len(row) != grid_size:
            problems.append(f"line {li}: row has {len(row) if len(row) <= grid_size else 'more than ' + str(grid_size)}"
                            f" cells, expected {grid_size}")
        rows.append(row[:grid_size] + [False] * max(0, grid_size - len(row)))
        if len(rows) > grid_size:
            break
    if len(rows) != grid_size:
        n = len(rows) if len(rows) <= grid_size else f"more than {grid_size}"
        problems.append(f"{n} rows, expected {grid_size}")
    for r, row in enumerate(rows[:grid_size]):
        mask[r] = row
    return mask, problems


def decode_mask(text: str, grid_size: int = DEFAULT_GRID_SIZE) -> tuple[np.ndarray, list[str]]:
    """Tolerant RLE decoder: (bool grid (g, g), problems). Never raises.

    Demo `parse_output_string` semantics (lower-case, strip, rows on newline, runs on ",",
    ``label*count``; any label other than ``others`` is foreground), plus repairs: a lead-in such as
    ``"The mask is:"`` is dropped, short rows / missing rows are padded with background, long rows /
    extra rows are truncated, unparsable runs are skipped. Each repair is listed in `problems`.
    """
    try:
        return _decode(text, grid_size)
    except Exception as e:  # last line of defence: the decoder must never raise
        return np.zeros((grid_size, grid_size), dtype=bool), [f"decoder error: {e!r}"]


def decode_mask_strict(text: str, grid_size: int = DEFAULT_GRID_SIZE) -> np.ndarray:
    """Strict RLE decoder: the bool grid, or `ValueError` naming the first problem(s)."""
    mask, problems = _decode(text, grid_size)
    if problems:
        extra = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError("malformed mask text: " + "; ".join(problems[:3]) + extra)
    return mask


def mask_labels(text: str) -> list[str]:
    """Distinct foreground labels named in RLE text, in order of appearance (tolerant)."""
    seen: list[str] = []
    if not isinstance(text, str):
        return seen
    for run in re.split(r"[,\n]", text.lower()):
        label, star, _ = run.strip().rpartition("*")
        label = label.split(":")[-1].strip()
        if star and label and label != BACKGROUND and label not in seen:
            seen.append(label)
    return seen


# --------------------------------------------------------------------------------------------
# Change detection
# --------------------------------------------------------------------------------------------

def change_mask(label_before: np.ndarray, label_after: np.ndarray, class_id: int) -> np.ndarray:
    """Changed pixels of one class between two co-registered label maps (bool (H, W)).

    A pixel is changed when it belongs to `class_id` in exactly one of the two maps (an object of
    that class was added or removed there).
    """
    a, b = np.asarray(label_before), np.asarray(label_after)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"label maps must be 2-D with equal shapes, got {a.shape} and {b.shape}")
    return (a == class_id) != (b == class_id)
