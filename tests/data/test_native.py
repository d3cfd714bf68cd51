"""Native dataset layouts -> instruction records, on tiny fixtures written here in each layout."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsunivlm_jax import tasks
from rsunivlm_jax.data import native, records
from tests.data.helpers import random_rgb, write_png


def _load(out, split):
    return records.load_source(out, split=split, strict=True)


def test_dior_rsvg(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    for i, stem in enumerate(["00001", "00002"]):
        Image.fromarray(random_rgb(i, 80, 100)).save(_mk(src / "JPEGImages") / f"{stem}.jpg")
    (src / "Annotations").mkdir()
    objs = {"00001": [("vehicle", (10, 20, 50, 60), "the vehicle on the left"),
                      ("ship", (0, 0, 100, 80), "the large ship")],
            "00002": [("windmill", (5, 5, 25, 45), "the windmill at the top")]}
    for stem, lst in objs.items():
        xml = f"<annotation><filename>{stem}.jpg</filename><size><width>100</width><height>80</height>" \
              "<depth>3</depth></size>"
        for name, (x1, y1, x2, y2), desc in lst:
            xml += f"<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>" \
                   f"<ymax>{y2}</ymax></bndbox><description>{desc}</description></object>"
        (src / "Annotations" / f"{stem}.xml").write_text(xml + "</annotation>")
    (src / "train.txt").write_text("0\n2\n")
    (src / "test.txt").write_text("1\n")
    native.convert("dior_rsvg", src, out)
    train, test = _load(out, "train"), _load(out, "test")
    assert [r["id"] for r in train] == ["dior_rsvg-0", "dior_rsvg-2"]
    r = train[0]
    assert r["task"] == "vg" and r["granularity"] == 1
    assert r["conversations"][0]["value"] == "<image>\n[VG] the vehicle on the left"
    assert r["conversations"][1]["value"] == "[10, 25, 50, 75]"
    assert r["gt"]["boxes_px"] == [[10, 20, 50, 60]] and (r["gt"]["width"], r["gt"]["height"]) == (100, 80)
    assert train[1]["conversations"][0]["value"].endswith("the windmill at the top")
    assert test[0]["conversations"][1]["value"] == "[0, 0, 100, 100]"
    assert json.loads((out / "manifest.json").read_text())["counts"] == {"train": 2, "test": 1}


def _mk(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.mark.parametrize("variant", ["LR", "HR"])
def test_rsvqa(tmp_path, variant):
    src, out = tmp_path / "src", tmp_path / "out"
    img_dir = _mk(src / ("Images_LR" if variant == "LR" else "Data"))
    for i in range(2):
        Image.fromarray(random_rgb(i, 32, 32)).save(img_dir / f"{i}.tif")
    prefix = "LR_split_train" if variant == "LR" else "USGS_split_test"
    qs = [{"id": 0, "img_id": 0, "type": "presence", "question": "Is there a road?", "answers_ids": [0], "active": True},
          {"id": 1, "img_id": 1, "type": "count", "question": "How many buildings are there?", "answers_ids": [1],
           "active": True},
          {"id": 2, "img_id": 1, "type": "comp", "question": "Inactive?", "answers_ids": [2], "active": False}]
    ans = [{"id": 0, "question_id": 0, "answer": "yes", "active": True},
           {"id": 1, "question_id": 1, "answer": "12", "active": True},
           {"id": 2, "question_id": 2, "answer": "no", "active": True}]
    (src / f"{prefix}_questions.json").write_text(json.dumps({"questions": qs}))
    (src / f"{prefix}_answers.json").write_text(json.dumps({"answers": ans}))
    (src / f"{prefix}_images.json").write_text(json.dumps({"images": [{"id": 0, "active": True},
                                                                     {"id": 1, "active": True}]}))
    native.convert(f"rsvqa_{variant.lower()}", src, out)
    split = "train" if variant == "LR" else "test"
    recs = _load(out, split)
    assert len(recs) == 2
    assert recs[0]["conversations"][0]["value"] == "<image>\n[VQA] Is there a road?"
    assert recs[0]["conversations"][1]["value"] == "yes"
    assert recs[1]["gt"] == {"answer": "12", "question_type": "count"}
    assert Path(recs[1]["images"][0]).name == "1.tif"


@pytest.mark.parametrize("name", ["ucm", "sydney", "rsicd"])
def test_karpathy_captions(tmp_path, name):
    src, out = tmp_path / "src", tmp_path / "out"
    d = _mk(src / ("RSICD_images" if name == "rsicd" else "imgs"))
    for i in range(3):
        Image.fromarray(random_rgb(i, 24, 24)).save(d / f"{i + 1}.tif")
    images = [{"filename": f"{i + 1}.tif", "imgid": i, "split": ["train", "val", "test"][i],
               "sentences": [{"raw": f"There are {i} planes .", "tokens": []},
                             {"raw": f" Some {i} planes parked .", "tokens": []}]} for i in range(3)]
    (src / f"dataset_{name}.json").write_text(json.dumps({"images": images, "dataset": name}))
    native.convert(f"{name}_captions" if name != "rsicd" else "rsicd", src, out)
    val = _load(out, "val")
    assert len(val) == 1 and val[0]["task"] == "cap"
    assert val[0]["conversations"][1]["value"] == "There are 1 planes ."
    assert val[0]["gt"]["references"] == ["There are 1 planes .", "Some 1 planes parked ."]
    out2 = tmp_path / "out2"
    native.convert_karpathy_captions(src, out2, per_sentence=True)
    assert len(_load(out2, "train")) == 2


def test_levir_cc(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    entries = []
    for i, split in enumerate(["train", "test"]):
        fn = f"{split}_{i:06d}.png"
        for side in "AB":
            write_png(src / "images" / split / side / fn, random_rgb(i * 2 + (side == "B"), 32, 32))
        entries.append({"filepath": split, "filename": fn, "split": split, "changeflag": i,
                        "sentences": [{"raw": " the scene is the same as before ", "tokens": []},
                                      {"raw": " there is no difference ", "tokens": []}]})
    (src / "LevirCCcaptions.json").write_text(json.dumps({"images": entries}))
    native.convert("levir_cc", src, out)
    r = _load(out, "test")[0]
    assert r["task"] == "ccd" and len(r["images"]) == 2
    assert r["image"] == ["images/test/A/test_000001.png", "images/test/B/test_000001.png"]
    assert r["conversations"][0]["value"].startswith("<image> <image>\n[CCD]")
    assert r["conversations"][1]["value"] == "the scene is the same as before"
    assert r["gt"]["changeflag"] == 1 and len(r["gt"]["references"]) == 2


@pytest.mark.parametrize("with_splits", [False, True])
def test_cd_folders(tmp_path, with_splits):
    src, out = tmp_path / "src", tmp_path / "out"
    base = src / "train" if with_splits else src
    label = np.zeros((48, 48), np.uint8)
    label[:24, 24:] = 1          # LEVIR-CD style 0/1 labels (also 0/255 elsewhere)
    for side in "AB":
        write_png(base / side / "p1.png", random_rgb(side == "B", 48, 48))
    write_png(base / "label" / "p1.png", label)
    native.convert("levir_cd", src, out, class_name="building")
    r = _load(out, "train" if with_splits else "all")[0]
    assert r["task"] == "cd" and r["granularity"] == 2
    assert r["conversations"][0]["value"] == \
        "<image> <image>\n[SEG] Please segment the building area that have changed in the second image."
    grid = tasks.decode_mask_strict(r["conversations"][1]["value"])
    expected = np.zeros((24, 24), bool)
    expected[:12, 12:] = True
    assert np.array_equal(grid, expected)
    saved = np.asarray(Image.open(out / r["gt"]["mask"]))
    assert set(np.unique(saved)) == {0, 255} and np.array_equal(saved > 0, label > 0)


def test_scene_folders(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    for c, cls in enumerate(["Airport", "dense_residential", "Forest"]):
        for i in range(4):
            Image.fromarray(random_rgb(c * 10 + i, 16, 16)).save(_mk(src / cls) / f"{cls}_{i}.jpg")
    native.convert("aid", src, out, test_fraction=0.25)
    train, test = _load(out, "train"), _load(out, "test")
    assert len(train) == 9 and len(test) == 3
    r = test[0]
    assert r["task"] == "cls"
    assert r["gt"]["classes"] == ["Airport", "dense residential", "Forest"]
    assert r["conversations"][0]["value"] == ("<image>\n[CLS] Classify the given image in one of the following "
                                              "classes: Airport, dense residential, Forest.")
    assert sorted(x["gt"]["label"] for x in test) == ["Airport", "Forest", "dense residential"]


def test_semseg(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    (src).mkdir()
    (src / "classes.json").write_text(json.dumps(["background", "building", "low_vegetation", "water"]))
    labels = np.zeros((48, 48), np.uint8)
    labels[:, :24] = 1
    labels[40:, 40:] = 3
    labels[0, 0] = 255   # ignore
    write_png(src / "images" / "t1.png", random_rgb(0, 48, 48))
    write_png(src / "masks" / "t1.png", labels)
    native.convert("semseg", src, out)
    recs = {r["gt"]["label"]: r for r in _load(out, "all")}
    assert set(recs) == {"building", "water"}
    b = recs["building"]
    assert b["conversations"][0]["value"] == "<image>\n[SEG] building."
    grid = tasks.decode_mask_strict(b["conversations"][1]["value"])
    assert np.array_equal(grid, tasks.mask_to_grid(labels, 24) == 1)
    assert grid[:, :12].all() and not grid[:, 12:].any()
    saved = np.asarray(Image.open(out / b["gt"]["mask"]))
    assert np.array_equal(saved == 255, labels == 1)
    assert (b["gt"]["width"], b["gt"]["height"]) == (48, 48)


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        native.convert("coco", tmp_path, tmp_path / "o")
