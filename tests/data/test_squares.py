"""The easiest grounding set (`rsunivlm_jax.data.synthetic.squares`): coloured squares on a plain
background, "Where is the red square?" -> "[x1, y1, x2, y2]" (the training experiment on it:
`tools/grounding_squares.py`, docs/demo.md)."""
import json

import numpy as np
import pytest

from rsunivlm_jax.data.synthetic.squares import make_square_image, write_squares


def test_square_images_hold_the_squares_the_records_name(tmp_path):
    rng = np.random.default_rng(0)
    image, squares = make_square_image(rng, 64, num_squares=3)
    assert len({c for c, _ in squares}) == 3
    for colour, (x1, y1, x2, y2) in squares:
        assert 12 <= x2 - x1 == y2 - y1 <= 24
        assert (image[y1:y2, x1:x2] == image[y1, x1]).all()
    path = write_squares(tmp_path, 5, split="test", num_squares=2)
    recs = [json.loads(line) for line in open(path)]
    assert len(recs) == 5 and all(r["task"] == "vg" for r in recs)
    assert all((tmp_path / r["image"]).is_file() for r in recs)


@pytest.mark.parametrize("kind", ["seg", "cd_colour", "cd_compare"])
def test_square_mask_records_answer_the_changed_or_named_cells(tmp_path, kind):
    """The RLE answer decodes to the grid of the record's mask; the mask covers exactly the pixels
    that are red in the (second) image and, for change records, differ between the two images;
    `cd_compare`'s first image already holds a red square (only comparing finds the new one)."""
    from PIL import Image

    from rsunivlm_jax import tasks as T
    from rsunivlm_jax.data.records import load_records
    from rsunivlm_jax.data.synthetic.squares import write_square_masks

    path = write_square_masks(tmp_path, 6, kind=kind, split="test")
    recs = [json.loads(line) for line in open(path)]
    assert len(recs) == 6 and len(load_records(path, tmp_path, grid_size=8)) == 6
    red = np.array([220, 40, 40])
    for r in recs:
        mask = np.asarray(Image.open(tmp_path / r["gt"]["mask"])) > 0
        grid = T.decode_mask_strict(r["conversations"][1]["value"], 8)
        assert (grid == T.mask_to_grid(mask, 8)).all() and 4 <= grid.sum() <= 9
        images = r["image"] if isinstance(r["image"], list) else [r["image"]]
        after = np.asarray(Image.open(tmp_path / images[-1]))
        if kind == "seg":
            assert r["task"] == "seg" and len(images) == 1
            assert ((after == red).all(-1) == mask).all()
        else:
            before = np.asarray(Image.open(tmp_path / images[0]))
            assert r["task"] == "cd" and "red area that have changed" in r["conversations"][0]["value"]
            assert ((before != after).any(-1) == mask).all()
            assert (before == red).all(-1).any() == (kind == "cd_compare")
