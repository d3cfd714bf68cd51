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


def test_pasted_changes_paste_one_square_onto_the_given_scenes(tmp_path):
    """Every pasted pair's before image is a given scene (or, for `compare`, that scene plus a square
    of the asked colour); the after image differs from it exactly on the record's mask, which is
    filled with the asked colour; the answer decodes to the mask's grid; kinds alternate."""
    from PIL import Image

    from rsunivlm_jax import tasks as T
    from rsunivlm_jax.data.records import load_records
    from rsunivlm_jax.data.synthetic.squares import COLOURS, PASTED_KINDS, write_pasted_changes

    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    scenes = []
    for k in range(2):
        scene = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(scene).save(tmp_path / f"images/scene_{k}.png")
        scenes.append(scene)
    path = write_pasted_changes(tmp_path, ["images/scene_0.png", "images/scene_1.png"], 6, split="train")
    assert path.endswith("pasted_train.jsonl")
    recs = [json.loads(line) for line in open(path)]
    assert len(load_records(path, tmp_path, grid_size=8)) == 6
    assert [r["gt"]["kind"] for r in recs] == list(PASTED_KINDS) * 2
    for i, r in enumerate(recs):
        colour = np.array(COLOURS[r["gt"]["label"]])
        before, after = (np.asarray(Image.open(tmp_path / p)) for p in r["image"])
        mask = np.asarray(Image.open(tmp_path / r["gt"]["mask"])) > 0
        assert r["task"] == "cd" and f"the {r['gt']['label']} area that have changed" in r["conversations"][0]["value"]
        assert ((before != after).any(-1) == mask).all() and (after[mask] == colour).all()
        assert (T.decode_mask_strict(r["conversations"][1]["value"], 8) == T.mask_to_grid(mask, 8)).all()
        scene = scenes[i % 2]
        if r["gt"]["kind"] == "compare":
            pasted = (before != scene).any(-1)
            assert pasted.any() and (before[pasted] == colour).all() and not (pasted & mask).any()
        else:
            assert r["image"][0] == f"images/scene_{i % 2}.png"
        ys, xs = np.nonzero(mask)
        side = xs.max() - xs.min() + 1
        if r["gt"]["kind"] == "off_grid":
            assert 18 <= side <= 24
        else:
            assert side in (16, 24) and xs.min() % 8 == 0 and ys.min() % 8 == 0
    again = tmp_path / "again"
    (again / "images").mkdir(parents=True)
    for k in range(2):
        (again / f"images/scene_{k}.png").write_bytes((tmp_path / f"images/scene_{k}.png").read_bytes())
    write_pasted_changes(again, ["images/scene_0.png", "images/scene_1.png"], 6, split="train")
    assert (again / "pasted_train.jsonl").read_bytes() == open(path, "rb").read()


def test_pasted_changes_refuse_scenes_outside_the_directory_or_of_another_size(tmp_path):
    from PIL import Image

    from rsunivlm_jax.data.synthetic.squares import write_pasted_changes

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link.png").symlink_to(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"scene image '\.\./small\.png' contains '\.\.'"):
        write_pasted_changes(tmp_path / "out", ["../small.png"], 1)
    with pytest.raises(ValueError, match="scene image 'link.png' resolves outside .* symlink"):
        write_pasted_changes(tmp_path / "out", ["link.png"], 1)
    assert not (tmp_path / "out" / "pasted_train.jsonl").exists()
    with pytest.raises(ValueError, match="32x32, expected 64x64"):
        write_pasted_changes(tmp_path, ["small.png"], 1)
