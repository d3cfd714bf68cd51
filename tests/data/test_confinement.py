"""Paths from data stay inside their roots; converter outputs stay inside the output directory.

Each test builds hostile inputs (``..``, absolute paths, symlinks leading outside, a manifest
`image_root` of ``/``, hostile class names, malformed annotations) around a `secret` file that
lies outside every root, and checks that the input is refused with an error naming the file,
record and field, that the secret's bytes reach no output, and that nothing is created outside.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsunivlm_jax import tasks
from rsunivlm_jax.data import native, records
from rsunivlm_jax.data.paths import DataError, file_component, resolve_inside
from tests.data.helpers import conv, random_rgb, write_jsonl, write_png


@pytest.fixture
def world(tmp_path):
    """tmp/outside/secret.png (never to be read), tmp/data (a record root with one good image)."""
    outside = tmp_path / "outside"
    secret = write_png(outside / "secret.png", random_rgb(123, 24, 24))
    data = tmp_path / "data"
    write_png(data / "good.png", random_rgb(1, 24, 24))
    write_png(data / "mask.png", np.full((24, 24), 255, np.uint8))
    return tmp_path, Path(secret), data


def _snapshot(base: Path, skip: Path | None = None) -> set:
    """Every path under `base` except inside `skip` (whose parent folders are made first)."""
    if skip is not None:
        skip.parent.mkdir(parents=True, exist_ok=True)
    out = set()
    for dirpath, dirnames, filenames in os.walk(base):
        if skip is not None and Path(dirpath).resolve().is_relative_to(skip.resolve()):
            continue
        out.update(str(Path(dirpath) / n) for n in dirnames + filenames)
    return {p for p in out if skip is None or not Path(p).is_relative_to(skip)}


def _files_holding(base: Path, payload: bytes) -> list:
    hits = []
    for dirpath, _, filenames in os.walk(base):
        for n in filenames:
            p = Path(dirpath) / n
            if p.is_file() and payload in p.read_bytes():
                hits.append(str(p))
    return hits


# --------------------------------------------------------------------------------------------
# The helper
# --------------------------------------------------------------------------------------------

def test_resolve_inside_refuses_each_escape(world):
    tmp, secret, data = world
    os.symlink(secret, data / "link.png")
    os.symlink(secret.parent, data / "linkdir")
    assert resolve_inside(data, "good.png") == (data / "good.png").resolve()
    for rel in ("../outside/secret.png", str(secret), "/etc/passwd", "C:/x.png", "a/../../x", "link.png",
                "linkdir/secret.png", "", "a\x00b"):
        with pytest.raises(DataError) as e:
            resolve_inside(data, rel, what="image path", file="f.jsonl", record=7, field="image")
        assert "f.jsonl" in str(e.value) and "record 7" in str(e.value) and "'image'" in str(e.value)
    assert file_component("../../etc/passwd x") == "etc_passwd_x"
    with pytest.raises(DataError):
        file_component("..")


# --------------------------------------------------------------------------------------------
# Records: gt paths of every task, manifests
# --------------------------------------------------------------------------------------------

def _rec(rid, task, gt):
    q = {"cap": "[CAP] describe.", "vqa": "[VQA] what?", "cls": "[CLS] which class?"}[task]
    return {"id": rid, "task": task, "image": "good.png", "conversations": conv(q, "an answer"), "gt": gt}


@pytest.mark.parametrize("task", ["cap", "vqa", "cls"])
def test_gt_mask_of_any_task_stays_inside_root(world, task):
    tmp, secret, data = world
    os.symlink(secret, data / "link.png")
    for i, bad in enumerate(["../outside/secret.png", str(secret), "link.png"]):
        f = write_jsonl(data / f"r{i}.jsonl", [_rec(f"bad{i}", task, {"mask": bad, "references": ["a"]})])
        with pytest.raises(records.RecordError) as e:
            records.load_source(f, strict=True)
        assert e.value.reason == "path_outside_root" and e.value.record_id == f"bad{i}"
        assert "mask" in str(e.value) and f"r{i}.jsonl" in str(e.value)


def test_tfds_build_packs_no_file_from_outside(world):
    from rsunivlm_jax.data.tfds_builder import TfdsSource, build_tfds, encode_record

    tmp, secret, data = world
    os.symlink(secret, data / "link.png")
    recs = [_rec("good", "cap", {"references": ["a"]}),
            _rec("dotdot", "cap", {"mask": "../outside/secret.png", "references": ["a"]}),
            _rec("absolute", "vqa", {"mask": str(secret), "answer": "a"}),
            _rec("symlink", "cls", {"mask": "link.png", "label": "a"})]
    f = write_jsonl(data / "train.jsonl", recs)
    src = records.load_source(f, strict=False)
    assert [r["id"] for r in src.records] == ["good"]
    assert src.report.counts["path_outside_root"] == 3
    out = build_tfds({"train": src}, tmp / "tfds")
    ds = TfdsSource(out, "train")
    assert [ds[i]["id"] for i in range(len(ds))] == ["good"]
    payload = secret.read_bytes()
    assert not any(payload in (ds[i].get("gt_mask_bytes") or b"") for i in range(len(ds)))
    # A record that skipped validation is refused by the encoder itself.
    raw = dict(recs[1], images=[str(data / "good.png")], root=str(data))
    with pytest.raises(records.RecordError, match="outside"):
        encode_record(raw)


def test_manifest_image_root_and_split_files_stay_inside(world):
    tmp, secret, data = world
    rel_from_root = os.path.relpath(secret, "/")
    write_jsonl(data / "train.jsonl", [{"id": "x", "image": rel_from_root,
                                        "conversations": conv("[CAP] describe.", "a")}])
    for image_root in ("/", "..", str(tmp)):
        (data / "manifest.json").write_text(json.dumps({"image_root": image_root,
                                                        "splits": {"train": "train.jsonl"}}))
        with pytest.raises(DataError) as e:
            records.load_source(data, split="train", strict=True)
        assert "manifest.json" in str(e.value) and "image_root" in str(e.value)
    os.symlink(tmp / "outside", data / "imgs")
    (data / "manifest.json").write_text(json.dumps({"image_root": "imgs", "splits": {"train": "train.jsonl"}}))
    with pytest.raises(DataError, match="image_root"):
        records.load_source(data, split="train", strict=True)
    write_jsonl(tmp / "outside" / "other.jsonl", [])
    (data / "manifest.json").write_text(json.dumps({"image_root": ".", "splits": {"train": "../outside/other.jsonl"}}))
    with pytest.raises(DataError) as e:
        records.load_source(data, split="train", strict=True)
    assert "splits" in str(e.value) and "manifest.json" in str(e.value)


# --------------------------------------------------------------------------------------------
# Native converters: reads inside src, writes inside out
# --------------------------------------------------------------------------------------------

def _expect_refused(fn, tmp, out, secret, *, names=()):
    before = _snapshot(tmp, skip=out)
    with pytest.raises(DataError) as e:
        fn()
    assert _snapshot(tmp, skip=out) == before, "a file was created outside the output directory"
    if out.exists():
        assert not _files_holding(out, secret.read_bytes())
    for n in names:
        assert n in str(e.value), (n, str(e.value))
    return e.value


def _karpathy(src, entries):
    (src / "imgs").mkdir(parents=True, exist_ok=True)
    write_png(src / "imgs" / "ok.png", random_rgb(2, 16, 16))
    (src / "dataset_x.json").write_text(json.dumps({"images": entries}))


def _kentry(**kw):
    e = {"filename": "ok.png", "imgid": 5, "split": "train", "sentences": [{"raw": "a plane ."}]}
    e.update(kw)
    return e


def test_karpathy_paths_confined(world):
    tmp, secret, _ = world
    src, out = tmp / "src", tmp / "a" / "b" / "out"
    # filepath with '..': reads tmp/outside/secret.png and would write out/images/../../../outside/...
    cases = [(_kentry(filepath="../../outside", filename="secret.png"), "filepath"),
             (_kentry(filename=str(secret)), "filename"),
             (_kentry(filename="link.png"), "filename")]
    for entry, field in cases:
        _karpathy(src, [_kentry(), entry])
        if not (src / "imgs" / "link.png").is_symlink():
            os.symlink(secret, src / "imgs" / "link.png")
        _expect_refused(lambda: native.convert_karpathy_captions(src, out), tmp, out, secret,
                        names=("dataset_x.json", "record 1", field))


def test_levir_cc_paths_confined(world):
    tmp, secret, _ = world
    src, out = tmp / "src", tmp / "a" / "out"
    for side in "AB":
        write_png(src / "images" / "train" / side / "p.png", random_rgb(3, 16, 16))
        write_png(tmp / "outside" / side / "secret.png", np.asarray(Image.open(secret)))
    entry = {"filepath": "../../outside", "filename": "secret.png", "split": "train",
             "sentences": [{"raw": "no change"}]}
    (src / "LevirCCcaptions.json").write_text(json.dumps({"images": [entry]}))
    secret = tmp / "outside" / "A" / "secret.png"
    _expect_refused(lambda: native.convert_levir_cc(src, out), tmp, out, secret,
                    names=("LevirCCcaptions.json", "record 0", "filepath"))
    entry.update(filepath="train", filename="../../../../outside/A/secret.png")
    (src / "LevirCCcaptions.json").write_text(json.dumps({"images": [entry]}))
    _expect_refused(lambda: native.convert_levir_cc(src, out), tmp, out, secret, names=("filename",))


def _dior(src, fname, obj="<object><name>ship</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>"
                           "<ymax>5</ymax></bndbox><description>the ship</description></object>"):
    (src / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (src / "Annotations").mkdir(parents=True, exist_ok=True)
    (src / "Annotations" / "00001.xml").write_text(
        f"<annotation><filename>{fname}</filename><size><width>16</width><height>16</height></size>"
        f"{obj}</annotation>")


def test_dior_filename_confined(world):
    tmp, secret, _ = world
    src, out = tmp / "src", tmp / "out"
    os.makedirs(src / "JPEGImages", exist_ok=True)
    os.symlink(secret, src / "JPEGImages" / "link.png")
    for fname in ("../../outside/secret.png", str(secret), "link.png"):
        _dior(src, fname)
        _expect_refused(lambda: native.convert_dior_rsvg(src, out), tmp, out, secret,
                        names=("00001.xml", "filename"))


def test_rsvqa_img_id_confined(world):
    tmp, secret, _ = world
    src, out = tmp / "src", tmp / "out"
    write_png(src / "Images_LR" / "0.png", random_rgb(4, 16, 16))
    q = {"id": 7, "img_id": "../../outside/secret", "type": "presence", "question": "Road?", "answers_ids": [0]}
    (src / "LR_split_train_questions.json").write_text(json.dumps({"questions": [q]}))
    (src / "LR_split_train_answers.json").write_text(json.dumps({"answers": [{"id": 0, "answer": "yes"}]}))
    _expect_refused(lambda: native.convert_rsvqa(src, out), tmp, out, secret,
                    names=("LR_split_train_questions.json", "record 7", "img_id"))


def test_folder_converters_refuse_symlinks_out(world):
    tmp, secret, _ = world
    # scene folders: a class folder holding a symlink to the secret
    src, out = tmp / "scene", tmp / "o1"
    write_png(src / "Airport" / "a.png", random_rgb(5, 16, 16))
    os.symlink(secret, src / "Airport" / "b.png")
    _expect_refused(lambda: native.convert_scene_folders(src, out), tmp, out, secret, names=("b.png",))
    # change-detection folders: the B image is a symlink to the secret
    src, out = tmp / "cd", tmp / "o2"
    write_png(src / "A" / "p.png", random_rgb(6, 16, 16))
    write_png(src / "label" / "p.png", np.zeros((16, 16), np.uint8))
    (src / "B").mkdir()
    os.symlink(secret, src / "B" / "p.png")
    _expect_refused(lambda: native.convert_cd_folders(src, out), tmp, out, secret, names=("p.png",))
    # a split folder that is a symlink to a directory outside
    src, out = tmp / "cd2", tmp / "o3"
    for side in ("A", "B"):
        write_png(tmp / "outside" / "split" / side / "p.png", np.asarray(Image.open(secret)))
    write_png(tmp / "outside" / "split" / "label" / "p.png", np.zeros((24, 24), np.uint8))
    src.mkdir()
    os.symlink(tmp / "outside" / "split", src / "train")
    _expect_refused(lambda: native.convert_cd_folders(src, out), tmp, out, secret, names=("train",))


def test_semseg_hostile_class_names_stay_in_out(world):
    tmp, secret, _ = world
    src, out = tmp / "seg", tmp / "x" / "y" / "out"
    (src / "masks").mkdir(parents=True)
    evil = "../../../../../../evil"  # after "t_..": all, masks, out, y, x, tmp
    (src / "classes.json").write_text(json.dumps(["background", evil, "a/b\\c"]))
    labels = np.zeros((24, 24), np.uint8)
    labels[:, :12] = 1
    labels[:12, 12:] = 2
    write_png(src / "images" / "t.png", random_rgb(7, 24, 24))
    write_png(src / "masks" / "t.png", labels)
    before = _snapshot(tmp, skip=out)
    native.convert_semseg(src, out, grid_size=8)
    assert _snapshot(tmp, skip=out) == before
    recs = records.load_source(out, strict=True, grid_size=8).records
    assert sorted(r["gt"]["label"] for r in recs) == sorted([evil.replace("_", " "), "a/b\\c"])
    for r in recs:
        mask = resolve_inside(out, r["gt"]["mask"])
        assert mask.parent == (out / "masks" / "all").resolve()
    # a class name with nothing usable for a file name is refused, naming classes.json and the index
    (src / "classes.json").write_text(json.dumps(["background", ".."]))
    _expect_refused(lambda: native.convert_semseg(src, tmp / "o4", grid_size=8), tmp, tmp / "o4", secret,
                    names=("classes.json", "record 1"))


def test_writes_refused_through_a_symlinked_output_folder(world):
    tmp, secret, _ = world
    src, out = tmp / "scene", tmp / "out"
    write_png(src / "Forest" / "f.png", random_rgb(8, 16, 16))
    (tmp / "elsewhere").mkdir()
    out.mkdir()
    os.symlink(tmp / "elsewhere", out / "images")
    with pytest.raises(DataError, match="outside"):
        native.convert_scene_folders(src, out)
    assert list((tmp / "elsewhere").iterdir()) == []


# --------------------------------------------------------------------------------------------
# Malformed native annotations: one named error, not KeyError / ParseError / TypeError
# --------------------------------------------------------------------------------------------

def _malformed_cases(tmp):
    good_obj = ("<object><name>ship</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>"
                "</bndbox></object>")

    def dior_xml(src):
        _dior(src, "a.png")
        write_png(src / "JPEGImages" / "a.png", random_rgb(1, 16, 16))
        (src / "Annotations" / "00001.xml").write_text("<annotation><filename>a.png</filename")
        return native.convert_dior_rsvg, ("00001.xml",)

    def dior_box(src):
        _dior(src, "a.png", obj="<object><name>ship</name><bndbox><xmin>1</xmin></bndbox></object>")
        write_png(src / "JPEGImages" / "a.png", random_rgb(1, 16, 16))
        return native.convert_dior_rsvg, ("00001.xml", "record 0", "ymin")

    def dior_split(src):
        _dior(src, "a.png", obj=good_obj)
        write_png(src / "JPEGImages" / "a.png", random_rgb(1, 16, 16))
        (src / "train.txt").write_text("0\n9\n")
        return native.convert_dior_rsvg, ("train.txt", "9")

    def karpathy_no_images(src):
        _karpathy(src, [])
        (src / "dataset_x.json").write_text(json.dumps({"pictures": []}))
        return native.convert_karpathy_captions, ("dataset_x.json", "images")

    def karpathy_no_filename(src):
        _karpathy(src, [_kentry(), {"sentences": [{"raw": "x"}]}])
        return native.convert_karpathy_captions, ("dataset_x.json", "record 1", "filename")

    def karpathy_bad_sentences(src):
        _karpathy(src, [_kentry(sentences="a plane")])
        return native.convert_karpathy_captions, ("dataset_x.json", "record 0", "sentences")

    def rsvqa_no_img_id(src):
        write_png(src / "Images_LR" / "0.png", random_rgb(4, 16, 16))
        (src / "LR_split_train_questions.json").write_text(json.dumps({"questions": [
            {"id": 3, "question": "Road?", "answers_ids": [0]}]}))
        (src / "LR_split_train_answers.json").write_text(json.dumps({"answers": [{"id": 0, "answer": "yes"}]}))
        return native.convert_rsvqa, ("LR_split_train_questions.json", "record 3", "img_id")

    def levir_no_filename(src):
        (src / "images").mkdir(parents=True)
        (src / "LevirCCcaptions.json").write_text(json.dumps({"images": [{"filepath": "train"}]}))
        return native.convert_levir_cc, ("LevirCCcaptions.json", "record 0", "filename")

    def semseg_classes(src):
        (src / "masks").mkdir(parents=True)
        (src / "classes.json").write_text(json.dumps("background"))
        return native.convert_semseg, ("classes.json",)

    def cd_corrupt_label(src):
        for side in "AB":
            write_png(src / side / "p.png", random_rgb(1, 16, 16))
        (src / "label").mkdir()
        (src / "label" / "p.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        return native.convert_cd_folders, ("label/p.png", "decoded")

    return [dior_xml, dior_box, dior_split, karpathy_no_images, karpathy_no_filename, karpathy_bad_sentences,
            rsvqa_no_img_id, levir_no_filename, semseg_classes, cd_corrupt_label]


@pytest.mark.parametrize("case", range(10))
def test_malformed_annotations_raise_named_data_error(tmp_path, case):
    make = _malformed_cases(tmp_path)[case]
    src = tmp_path / "src"
    src.mkdir()
    convert, names = make(src)
    with pytest.raises(DataError) as e:
        convert(src, tmp_path / "out")
    for n in names:
        assert n in str(e.value), (make.__name__, n, str(e.value))


def test_hostile_outputs_never_written_with_tasks_masks(world):
    """cd_folders' class name becomes part of a mask file name: sanitised, inside out/masks."""
    tmp, _, _ = world
    src, out = tmp / "cd", tmp / "p" / "q" / "out"
    for side in "AB":
        write_png(src / side / "p.png", random_rgb(side == "B", 16, 16))
    write_png(src / "label" / "p.png", np.zeros((16, 16), np.uint8))
    before = _snapshot(tmp, skip=out)
    native.convert_cd_folders(src, out, class_name="../../../../x", grid_size=tasks.DEFAULT_GRID_SIZE)
    assert _snapshot(tmp, skip=out) == before
    r = records.load_source(out, strict=True).records[0]
    assert resolve_inside(out, r["gt"]["mask"]).parent == (out / "masks" / "all").resolve()
