"""The easiest grounding set: coloured squares on a plain background, for diagnosing grounding.

One to four non-overlapping squares (12-24 px at 64 px, one colour each from `COLOURS`) on a
uniform grey; the `[VG]` question names one square by its colour ("Where is the red square?") and
the answer is its box in the paper's format. With one square the answer needs no reading of the
question, only of the image (where is the square?); with two or more the model must also pick the
square the question names (text-conditioned selection). `docs/demo.md` reports what the tiny model
learns on each.
"""
from __future__ import annotations

import json
import os

import numpy as np

from rsunivlm_jax import fileio
from rsunivlm_jax import tasks as T
from rsunivlm_jax.data.synthetic.sample import check_split

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230), "yellow": (230, 220, 40)}


def _place(rng, size: int, side: int, taken: list) -> list[int] | None:
    for _ in range(100):
        x1, y1 = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
        box = [x1, y1, x1 + side, y1 + side]
        if all(box[2] <= o[0] or o[2] <= box[0] or box[3] <= o[1] or o[3] <= box[1] for o in taken):
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
    from PIL import Image
    check_split(split)
    rng = np.random.default_rng([seed, num_squares, sum(map(ord, split))])
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    lines = []
    for i in range(int(num)):
        image, squares = make_square_image(rng, image_size, num_squares)
        name, box = squares[0]
        rel = f"images/squares{num_squares}_{split}_{i:06d}.png"
        tmp = os.path.join(out_dir, rel + ".tmp")
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, os.path.join(out_dir, rel))
        lines.append(json.dumps({
            "id": f"squares{num_squares}-{split}-{i:06d}", "task": "vg", "image": rel,
            "conversations": [
                {"from": "human", "value": T.make_user_message("vg", expression=f"Where is the {name} square?")},
                {"from": "gpt", "value": T.format_boxes([box], image_size, image_size)}],
            "gt": {"boxes_px": [box], "width": image_size, "height": image_size}}))
    path = os.path.join(out_dir, f"{split}.jsonl")
    fileio.atomic_write_text(path, "\n".join(lines) + "\n")
    return path
