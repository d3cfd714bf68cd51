"""The easiest grounding set (`rsunivlm_jax.data.synthetic.squares`): coloured squares on a plain
background, "Where is the red square?" -> "[x1, y1, x2, y2]" (the training experiment on it:
`tools/grounding_squares.py`, docs/demo.md)."""
import json

import numpy as np

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
