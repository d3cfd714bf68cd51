"""Tests of the built-in synthetic remote-sensing dataset (rsunivlm_jax.data.synthetic).

Ground truth is checked against the rendered label maps with independent code here (connected
components, PIL nearest resizing), not against the generator's own bookkeeping.
"""
import collections
import json
import math
import os
import re

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from rsunivlm_jax import tasks as T
from rsunivlm_jax.data import synthetic as S
from rsunivlm_jax.data.synthetic.text import CAPTION_PREFIX
from rsunivlm_jax.router import route

SIZE, GRID, NUM, SEED = 64, 8, 12, 5
EXPECTED_GT_KEYS = {
    "cls": {"label", "classes"}, "vqa": {"answer", "question_type"},
    "vg": {"boxes_px", "width", "height"}, "ref": {"box_px", "answer", "width", "height"},
    "cap": {"references"}, "ccd": {"references"},
    "seg": {"mask", "label", "width", "height"}, "cd": {"mask", "label", "width", "height"},
}
TAG = {"cap": "[CAP]", "vqa": "[VQA]", "cls": "[CLS]", "vg": "[VG]", "ref": "[REF]",
       "seg": "[SEG]", "ccd": "[CCD]", "cd": "[SEG]"}
GRANULARITY = {"cap": 0, "vqa": 0, "cls": 0, "ccd": 0, "vg": 1, "ref": 1, "seg": 2, "cd": 2}


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def _read(root, split="train"):
    with open(os.path.join(root, f"{split}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    path = S.write_dataset(root, NUM, image_size=SIZE, seed=SEED, grid_size=GRID, progress=False)
    return root, path, _read(root)


def _scene(index, size=SIZE):
    return S.scene_for(SEED, "train", index, size)


def _index(rec):
    return int(re.fullmatch(r"syn-train-(\d{6})-\w+", rec["id"]).group(1))


def _components(label, class_name):
    """Tight pixel boxes (exclusive right/bottom) of the 4-connected components of a class."""
    lab, n = ndimage.label(label == S.CLASS_NAMES.index(class_name))
    boxes = []
    for sl in ndimage.find_objects(lab):
        boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
    return lab, boxes


def _cell(box, size):
    cx, cy = (box[0] + box[2]) / 2 / size, (box[1] + box[3]) / 2 / size
    rows = ("top", "", "bottom")
    cols = ("left", "", "right")
    r, c = min(2, int(cy * 3)), min(2, int(cx * 3))
    return " ".join(w for w in (rows[r], cols[c]) if w) or "center"


def _units(v, s):
    return min(100, max(0, int(math.floor(100 * v / s + 0.5))))


def _nearest_grid(mask_bool, grid):
    img = Image.fromarray(mask_bool.astype(np.uint8) * 255).resize((grid, grid), Image.NEAREST)
    return np.asarray(img) > 127


# --------------------------------------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    root, _, _ = dataset
    again = str(tmp_path / "again")
    S.write_dataset(again, NUM, image_size=SIZE, seed=SEED, grid_size=GRID, progress=False)
    a, b = _files(root), _files(again)
    assert sorted(a) == sorted(b)
    assert all(a[k] == b[k] for k in a)
    other = str(tmp_path / "other")
    S.write_dataset(other, NUM, image_size=SIZE, seed=SEED + 1, grid_size=GRID, progress=False)
    c = _files(other)
    assert c["train.jsonl"] != a["train.jsonl"]
    assert c["images/train_000000.png"] != a["images/train_000000.png"]
    # another split of the same seed is another stream
    S.write_dataset(other, 2, image_size=SIZE, seed=SEED, split="val", grid_size=GRID, progress=False)
    assert _files(other)["images/val_000000.png"] != a["images/train_000000.png"]


def test_records_cover_all_tasks_and_follow_schema(dataset):
    root, path, recs = dataset
    assert path == os.path.join(root, "train.jsonl")
    assert collections.Counter(r["task"] for r in recs) == {t: NUM for t in S.ALL_TASKS}
    assert len({r["id"] for r in recs}) == len(recs)
    for r in recs:
        task = r["task"]
        assert set(r) == {"id", "task", "image", "conversations", "gt"}, r["id"]
        assert r["id"] == f"syn-train-{_index(r):06d}-{task}"
        images = r["image"] if isinstance(r["image"], list) else [r["image"]]
        assert len(images) == (2 if task in ("ccd", "cd") else 1)
        for p in images:
            assert not os.path.isabs(p) and ".." not in p.split("/")
            with Image.open(os.path.join(root, p)) as im:
                assert im.mode == "RGB" and im.size == (SIZE, SIZE)
        conv = r["conversations"]
        assert [c["from"] for c in conv] == ["human", "gpt"]
        assert all(isinstance(c["value"], str) and c["value"].strip() for c in conv)
        prefix = "<image> <image>\n" if len(images) == 2 else "<image>\n"
        assert conv[0]["value"].startswith(prefix + TAG[task] + " "), conv[0]["value"]
        assert conv[0]["value"].count("<image>") == len(images)
        assert route(conv[0]["value"]) == GRANULARITY[task]
        assert EXPECTED_GT_KEYS[task] <= set(r["gt"]), r["id"]
        if task in ("seg", "cd"):
            assert os.path.isfile(os.path.join(root, r["gt"]["mask"]))
            assert r["gt"]["label"] in r["conversations"][0]["value"]
        if task == "cls":
            assert r["gt"]["label"] == conv[1]["value"] in r["gt"]["classes"]
            for c in r["gt"]["classes"]:
                assert c in conv[0]["value"]
        if task in ("cap", "ccd"):
            assert conv[1]["value"] == r["gt"]["references"][0]
    # scene classes cycle: exactly balanced over a multiple of six scenes
    cls = collections.Counter(r["gt"]["label"] for r in recs if r["task"] == "cls")
    assert cls == {c: NUM // len(S.SCENE_CLASSES) for c in S.SCENE_CLASSES}


def test_boxes_are_tight_around_one_object(dataset):
    _, _, recs = dataset
    checked = 0
    for r in recs:
        if r["task"] not in ("vg", "ref"):
            continue
        scene = _scene(_index(r))
        rgb, label = S.render(scene)
        q, a = r["conversations"][0]["value"], r["conversations"][1]["value"]
        if r["task"] == "vg":
            colour, category, pos = re.fullmatch(r".*Where is the (\w+) (\w+) at the ([\w ]+)\?", q,
                                                 re.S).groups()
            (box,) = r["gt"]["boxes_px"]
        else:
            count, category, pos = re.fullmatch(r"(\d+) (\w+) at the ([\w ]+)\.", a).groups()
            assert count == "1"
            box = r["gt"]["box_px"]
            assert T.parse_boxes(q) == [tuple(_units(v, SIZE) for v in box)]
        x1, y1, x2, y2 = box
        assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
        lab, comps = _components(label, category)
        assert tuple(box) in comps, (r["id"], box, comps)
        assert _cell(box, SIZE) == pos
        if r["task"] == "vg":
            assert T.parse_boxes(a) == [tuple(_units(v, SIZE) for v in box)]
            palette = S.BUILDING_COLOURS if category == "building" else S.SHIP_COLOURS

            def colour_of(b):
                comp = lab[b[1]:b[3], b[0]:b[2]] > 0
                med = np.median(rgb[b[1]:b[3], b[0]:b[2]][comp], axis=0)
                return min(palette, key=lambda k: np.sum((np.array(palette[k]) - med) ** 2))
            assert colour_of(box) == colour
            same = [b for b in comps if _cell(b, SIZE) == pos and colour_of(b) == colour]
            assert same == [tuple(box)], "referring expression must be unambiguous"
            side = max(x2 - x1, y2 - y1) / SIZE
            assert side >= 0.15
        checked += 1
    assert checked == 2 * NUM


def test_seg_masks_equal_label_map_and_answers_decode(dataset):
    root, _, recs = dataset
    for r in (r for r in recs if r["task"] == "seg"):
        _, label = S.render(_scene(_index(r)))
        with Image.open(os.path.join(root, r["gt"]["mask"])) as im:
            assert im.mode == "L"
            png = np.asarray(im)
        expected = label == S.CLASS_NAMES.index(r["gt"]["label"])
        assert set(np.unique(png).tolist()) <= {0, 255}
        np.testing.assert_array_equal(png == 255, expected)
        assert expected.any()
        grid, problems = T.decode_mask(r["conversations"][1]["value"], GRID)
        assert problems == []
        np.testing.assert_array_equal(grid, _nearest_grid(expected, GRID))
        assert grid.any()


def test_change_masks_equal_pixelwise_class_difference(dataset):
    root, _, recs = dataset
    kinds = collections.Counter()
    for r in (r for r in recs if r["task"] == "cd"):
        scene = _scene(_index(r))
        change = S.make_change(scene)
        _, before = S.render(scene)
        after_rgb, after = S.render(change.after)
        with Image.open(os.path.join(root, r["image"][1])) as im:
            np.testing.assert_array_equal(np.asarray(im), after_rgb)
        cid = S.CLASS_NAMES.index(r["gt"]["label"])
        assert r["gt"]["label"] in ("building", "road")
        expected = (before == cid) ^ (after == cid)
        with Image.open(os.path.join(root, r["gt"]["mask"])) as im:
            np.testing.assert_array_equal(np.asarray(im) == 255, expected)
        assert expected.any()
        grid, problems = T.decode_mask(r["conversations"][1]["value"], GRID)
        assert problems == []
        np.testing.assert_array_equal(grid, _nearest_grid(expected, GRID))
        assert grid.any(), "the change must be visible on the answer grid"
        kinds[r["gt"]["label"]] += 1
    ccd = [r for r in recs if r["task"] == "ccd"]
    for r in ccd:
        words = r["conversations"][1]["value"]
        cd = next(x for x in recs if x["task"] == "cd" and _index(x) == _index(r))
        assert cd["gt"]["label"] in words and cd["image"] == r["image"]
        assert words.endswith(".") and len(words.split()) <= 10


def test_vqa_answers_match_label_map_and_are_balanced():
    answers, types = collections.Counter(), collections.Counter()
    for i in range(150):
        scene = S.generate_scene(np.random.default_rng([11, i]), SIZE)
        _, label = S.render(scene)
        (r,) = S.make_records(scene, i, tasks=("vqa",))
        q, a = r["conversations"][0]["value"], r["conversations"][1]["value"]
        qtype = r["gt"]["question_type"]
        assert a == r["gt"]["answer"]
        types[qtype] += 1
        m = re.search(r"Is there (?:an? )?(\w+)\?", q)
        if qtype == "presence":
            present = bool((label == S.CLASS_NAMES.index(m.group(1))).any())
            assert a == ("yes" if present else "no"), (q, a)
        elif qtype == "count":
            cat = re.search(r"How many (\w+)s are there\?", q).group(1)
            assert a == str(len(_components(label, cat)[1])), (q, a)
        else:
            c1, c2 = re.search(r"Are there more (\w+)s than (\w+)s\?", q).groups()
            n1, n2 = len(_components(label, c1)[1]), len(_components(label, c2)[1])
            assert n1 != n2 and a == ("yes" if n1 > n2 else "no")
        if a in ("yes", "no"):
            answers[a] += 1
    assert set(types) == {"presence", "count", "comparison"}
    yes_fraction = answers["yes"] / (answers["yes"] + answers["no"])
    assert 0.38 <= yes_fraction <= 0.62, answers


def test_scene_classes_are_balanced_and_derived_from_layout():
    counts = collections.Counter()
    n = 240
    for i in range(n):
        scene = S.generate_scene(np.random.default_rng([12, i]), SIZE)
        counts[scene.scene_class] += 1
        _, label = S.render(scene)
        objs = {c: len(_components(label, c)[1]) for c in ("building", "ship")}
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in _components(label, "building")[1]]
        mean_area = float(np.mean(areas)) / label.size if areas else 0.0
        assert S.derive_scene_class(label, objs, mean_area) == scene.scene_class
    assert set(counts) == set(S.SCENE_CLASSES)
    for c in S.SCENE_CLASSES:          # expected 40 each
        assert 22 <= counts[c] <= 58, counts


def test_captions_follow_the_scene_graph(dataset):
    _, _, recs = dataset
    words = {w: i for i, w in enumerate(S.NUMBER_WORDS)}
    for r in (r for r in recs if r["task"] == "cap"):
        scene = _scene(_index(r))
        _, label = S.render(scene)
        cap = r["conversations"][1]["value"]
        assert cap.startswith(CAPTION_PREFIX[scene.scene_class])
        noun = "ship" if scene.scene_class == "harbor" else "building"
        m = re.search(rf"(\w+) (?:large )?{noun}s?\b", cap)
        if m:
            n = 1 if m.group(1) in ("a", "an", "large") else words[m.group(1)]
            assert n == len(_components(label, noun)[1]), cap


def test_sizes_grid_and_task_subsets(tmp_path):
    scene = S.scene_for(0, "train", 3, 384)
    rgb, label = S.render(scene)
    assert rgb.shape == (384, 384, 3) and rgb.dtype == np.uint8 and label.shape == (384, 384)
    for grid in (8, 24):
        (rec,) = S.make_records(scene, 3, grid_size=grid, tasks=("seg",))
        assert len(rec["conversations"][1]["value"].split("\n")) == grid
    root = str(tmp_path / "sub")
    S.write_dataset(root, 3, image_size=32, tasks=("cls", "cd"), progress=False)
    recs = _read(root)
    assert sorted(r["task"] for r in recs) == ["cd", "cd", "cd", "cls", "cls", "cls"]
    assert all(os.path.isfile(os.path.join(root, p)) for r in recs for p in
               (r["image"] if isinstance(r["image"], list) else [r["image"]]))
    # a task's records do not depend on which other tasks are written
    full = {r["task"]: r for r in S.make_records(scene, 3)}
    assert S.make_records(scene, 3, tasks=("vg",))[0] == full["vg"]


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="num"):
        S.write_dataset(str(tmp_path), -1, progress=False)
    with pytest.raises(ValueError, match="split"):
        S.write_dataset(str(tmp_path), 1, split="../x", progress=False)
    with pytest.raises(ValueError, match="tasks"):
        S.write_dataset(str(tmp_path), 1, tasks=("det",), progress=False)
    with pytest.raises(ValueError, match="fmt"):
        S.write_dataset(str(tmp_path), 1, fmt="parquet", progress=False)
    with pytest.raises(ValueError, match="image_size"):
        S.generate_scene(np.random.default_rng(0), 16)
    with pytest.raises(ValueError, match="scene class"):
        S.generate_scene(np.random.default_rng(0), 64, "airport")


def test_render_gallery_writes_png(tmp_path):
    out = S.render_gallery(str(tmp_path / "g.png"), seed=1, image_size=96)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 800 and im.size[1] > 600


def test_records_pass_the_pipeline_validator(dataset):
    from rsunivlm_jax.data import records
    root, path, recs = dataset
    src = records.load_source(path, root, strict=True, grid_size=GRID)
    assert len(src.records) == len(recs)
    assert {r["task"] for r in src.records} == set(S.ALL_TASKS)


def test_tfds_format_packs_every_split(tmp_path):
    from rsunivlm_jax.data import tfds_builder
    root = str(tmp_path / "t")
    S.write_dataset(root, 2, image_size=32, grid_size=GRID, split="train", progress=False)
    out = S.write_dataset(root, 1, image_size=32, grid_size=GRID, split="test", fmt="tfds",
                          progress=False)
    assert len(tfds_builder.TfdsSource(out, "train")) == 16
    ex = tfds_builder.TfdsSource(out, "test")[0]
    with open(os.path.join(root, "images", "test_000000.png"), "rb") as f:
        assert ex["image_bytes"][0] == f.read()


@pytest.mark.slow
def test_worker_processes_write_identical_files(dataset, tmp_path):
    root, _, _ = dataset
    par = str(tmp_path / "par")
    S.write_dataset(par, NUM, image_size=SIZE, seed=SEED, grid_size=GRID, progress=False, num_workers=2)
    a, b = _files(root), _files(par)
    assert sorted(a) == sorted(b) and all(a[k] == b[k] for k in a)
