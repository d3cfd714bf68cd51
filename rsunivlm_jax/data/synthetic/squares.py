"""The easiest grounding set: coloured squares on a plain background, for diagnosing grounding.

One to four non-overlapping squares (12-24 px at 64 px, one colour each from `COLOURS`) on a
uniform grey; the `[VG]` question names one square by its colour ("Where is the red square?") and
the answer is its box in the paper's format. With one square the answer needs no reading of the
question, only of the image (where is the square?); with two or more the model must also pick the
square the question names (text-conditioned selection). The mask sets (`write_square_masks`) put
cell-aligned squares on the same plain background; `write_pasted_changes` pastes squares onto
scene images instead, for change detection on textured scenes. `docs/demo.md` reports what the
tiny model learns on each.
"""
from __future__ import annotations

import json
import os

import numpy as np

from rsunivlm_jax import fileio
from rsunivlm_jax import tasks as T
from rsunivlm_jax.data.paths import resolve_inside
from rsunivlm_jax.data.synthetic.sample import check_split

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230), "yellow": (230, 220, 40)}


def _free(box, taken) -> bool:
    """Whether pixel box ``[x1, y1, x2, y2]`` overlaps none of the boxes in `taken`."""
    return all(box[2] <= o[0] or o[2] <= box[0] or box[3] <= o[1] or o[3] <= box[1] for o in taken)


def _save_png(out_dir, rel: str, array) -> None:
    """`array` as a PNG at `out_dir`/`rel`, written to a temporary name and renamed."""
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    fileio.atomic_write_bytes(os.path.join(out_dir, rel), buf.getvalue())


def _place(rng, size: int, side: int, taken: list) -> list[int] | None:
    for _ in range(100):
        x1, y1 = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
        box = [x1, y1, x1 + side, y1 + side]
        if _free(box, taken):
            return box
    return None


def make_square_image(rng, size: int = 64, num_squares: int = 1):
    """(RGB uint8 image, [(colour, box)]) with pixel boxes ``[x1, y1, x2, y2]`` (exclusive ends)."""
    if not 1 <= num_squares <= len(COLOURS):
        raise ValueError(f"num_squares must be 1..{len(COLOURS)}, got {num_squares}")
    image = np.full((size, size, 3), int(rng.integers(90, 150)), np.uint8)
    lo, hi = round(size * 12 / 64), round(size * 24 / 64)
    squares, taken = [], []
    for k in rng.permutation(len(COLOURS))[:num_squares]:
        name = list(COLOURS)[int(k)]
        box = None
        while box is None:
            box = _place(rng, size, int(rng.integers(lo, hi + 1)), taken)
        taken.append(box)
        image[box[1]:box[3], box[0]:box[2]] = COLOURS[name]
        squares.append((name, box))
    return image, squares


def write_squares(out_dir, num: int, *, split: str = "train", num_squares: int = 1, image_size: int = 64,
                  seed: int = 0) -> str:
    """Writes `num` `[VG]` records (``<split>.jsonl``) and their PNGs under `out_dir`; returns the records' path."""
    check_split(split)
    rng = np.random.default_rng([seed, num_squares, sum(map(ord, split))])
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    lines = []
    for i in range(int(num)):
        image, squares = make_square_image(rng, image_size, num_squares)
        name, box = squares[0]
        rel = f"images/squares{num_squares}_{split}_{i:06d}.png"
        _save_png(out_dir, rel, image)
        lines.append(json.dumps({
            "id": f"squares{num_squares}-{split}-{i:06d}", "task": "vg", "image": rel,
            "conversations": [
                {"from": "human", "value": T.make_user_message("vg", expression=f"Where is the {name} square?")},
                {"from": "gpt", "value": T.format_boxes([box], image_size, image_size)}],
            "gt": {"boxes_px": [box], "width": image_size, "height": image_size}}))
    path = os.path.join(out_dir, f"{split}.jsonl")
    fileio.atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _pasted_record(out_dir, rid: str, stem: str, task: str, firsts: list, before, target, label: str,
                   grid_size: int, **gt) -> str:
    """Pastes a square of colour `label` at pixel box `target` onto `before`, saves the result as
    ``images/<stem>.png`` (the last image, after `firsts`) and its mask as ``masks/<stem>.png``, and
    returns the record's JSON line: the question asks for `label`'s area, the answer is the mask."""
    size = before.shape[0]
    after = before.copy()
    after[target[1]:target[3], target[0]:target[2]] = COLOURS[label]
    mask = np.zeros((size, size), np.uint8)
    mask[target[1]:target[3], target[0]:target[2]] = 255
    _save_png(out_dir, f"images/{stem}.png", after)
    _save_png(out_dir, f"masks/{stem}.png", mask)
    images = [*firsts, f"images/{stem}.png"]
    return json.dumps({
        "id": rid, "task": task, "image": images if len(images) > 1 else images[0],
        "conversations": [
            {"from": "human", "value": T.make_user_message(task, label=label)},
            {"from": "gpt", "value": T.encode_mask(T.mask_to_grid(mask > 0, grid_size), label)}],
        "gt": {"mask": f"masks/{stem}.png", "label": label, "width": size, "height": size, "grid_size": grid_size,
               **gt}})


MASK_KINDS = ("seg", "cd_colour", "cd_compare")


def _place_cells(rng, size: int, cell: int, taken: list) -> list[int]:
    """A square of 2 or 3 grid cells per side on the cell grid, not overlapping `taken`."""
    for _ in range(1000):
        side = int(rng.integers(2, 4)) * cell
        x1 = int(rng.integers(0, (size - side) // cell + 1)) * cell
        y1 = int(rng.integers(0, (size - side) // cell + 1)) * cell
        box = [x1, y1, x1 + side, y1 + side]
        if _free(box, taken):
            return box
    raise RuntimeError("no free place for a square")


def write_square_masks(out_dir, num: int, *, kind: str, split: str = "train", image_size: int = 64,
                       grid_size: int = 8, seed: int = 0) -> str:
    """Writes `num` mask records (``<split>.jsonl``, PNGs, masks) of the easiest mask sets, every
    square on the `grid_size` cell grid so the answer grid is exact:

    * ``seg``: a red and a blue square; ``[SEG] red.`` asks for the red one (no selection: the
      target always has the same colour; what is tested is reading cells into row-wise RLE text);
    * ``cd_colour``: two images; the second adds a red square next to a blue one present in both
      (the change is visible in the second image alone);
    * ``cd_compare``: two images; a red square in both, the second adds another red square (only a
      comparison of the two images finds the change).

    Change records ask ``[SEG] Please segment the red area that have changed in the second image.``
    Returns the records' path."""
    check_split(split)
    if kind not in MASK_KINDS:
        raise ValueError(f"kind must be one of {MASK_KINDS}, got {kind!r}")
    if image_size % grid_size:
        raise ValueError(f"image_size {image_size} is not a multiple of grid_size {grid_size}")
    cell = image_size // grid_size
    rng = np.random.default_rng([seed, MASK_KINDS.index(kind), sum(map(ord, split))])
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)

    lines = []
    for i in range(int(num)):
        before = np.full((image_size, image_size, 3), int(rng.integers(90, 150)), np.uint8)
        other = _place_cells(rng, image_size, cell, [])
        before[other[1]:other[3], other[0]:other[2]] = COLOURS["red" if kind == "cd_compare" else "blue"]
        target = _place_cells(rng, image_size, cell, [other])
        stem = f"{kind}_{split}_{i:06d}"
        firsts = []
        if kind != "seg":
            firsts = [f"images/{stem}_a.png"]
            _save_png(out_dir, firsts[0], before)
        lines.append(_pasted_record(out_dir, stem, stem, "seg" if kind == "seg" else "cd", firsts, before, target,
                                    "red", grid_size))
    path = os.path.join(out_dir, f"{split}.jsonl")
    fileio.atomic_write_text(path, "\n".join(lines) + "\n")
    return path


PASTED_KINDS = ("added", "compare", "off_grid")


def write_pasted_changes(out_dir, images, num: int, *, split: str = "train", image_size: int = 64,
                         grid_size: int = 8, seed: int = 0) -> str:
    """Change pairs made by pasting a square onto scenes: `num` ``cd`` records in
    ``pasted_<split>.jsonl`` under `out_dir`, with their PNGs and masks; returns the records' path.

    `images` are paths relative to `out_dir` of `image_size` RGB scenes (`tools/grounding_squares.py`
    passes the main job's synthetic scenes), used in turn as the before image; each must resolve
    inside `out_dir` (symlinks followed). The after image pastes one square of a
    colour from `COLOURS`, and the question asks for that colour's changed area
    (``[SEG] Please segment the red area that have changed in the second image.``). The kinds
    follow `PASTED_KINDS` in turn:

    * ``added``: 2-3 grid cells on the cell grid;
    * ``compare``: the same, with a square of the same colour at another place in both images, so
      only comparing the two images tells which one is new;
    * ``off_grid``: 18-24 px at 64 px (scaled with `image_size`), anywhere.

    The main job's tiny model reads these changes within a few hundred steps, unlike the scenes'
    own change pairs (docs/demo.md). Deterministic in the arguments.
    """
    from PIL import Image

    check_split(split)
    if image_size % grid_size:
        raise ValueError(f"image_size {image_size} is not a multiple of grid_size {grid_size}")
    images = list(images)
    if num and not images:
        raise ValueError("no scene images to paste onto")
    cell = image_size // grid_size
    lo, hi = round(image_size * 18 / 64), round(image_size * 24 / 64)
    rng = np.random.default_rng([seed, 11, sum(map(ord, split))])
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    lines = []
    for i in range(int(num)):
        rel = images[i % len(images)]
        with Image.open(resolve_inside(out_dir, rel, what="scene image")) as im:
            before = np.array(im.convert("RGB"))
        if before.shape != (image_size, image_size, 3):
            raise ValueError(f"scene image {rel!r} is {before.shape[1]}x{before.shape[0]}, "
                             f"expected {image_size}x{image_size}")
        kind = PASTED_KINDS[i % len(PASTED_KINDS)]
        name = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        stem = f"pasted_{split}_{i:06d}"
        firsts, taken = [rel], []
        if kind == "compare":
            taken.append(_place_cells(rng, image_size, cell, []))
            x1, y1, x2, y2 = taken[0]
            before[y1:y2, x1:x2] = COLOURS[name]
            firsts = [f"images/{stem}_a.png"]
            _save_png(out_dir, firsts[0], before)
        if kind == "off_grid":
            target = _place(rng, image_size, int(rng.integers(lo, hi + 1)), taken)
        else:
            target = _place_cells(rng, image_size, cell, taken)
        lines.append(_pasted_record(out_dir, f"pasted-{split}-{i:06d}", stem, "cd", firsts, before, target, name,
                                    grid_size, kind=kind))
    path = os.path.join(out_dir, f"pasted_{split}.jsonl")
    fileio.atomic_write_text(path, "\n".join(lines) + "\n" if lines else "")
    return path
