"""Converters from the native layouts of public RS datasets to instruction records (with ``gt``).

Each converter reads `src` in the layout documented in its docstring (and in docs/data.md),
links or copies the images into ``out/images/...``, writes any derived binary masks into
``out/masks/...``, and writes ``out/<split>.jsonl`` plus ``out/manifest.json``
(``{"format", "image_root": ".", "splits": {split: file}, "counts": {split: n}}``). The output
directory is a self-contained record source for `records.load_source` / the pipeline / the TFDS
builder. Prompts and answers come from `rsunivlm_jax.tasks`.

Confinement: every path named by an annotation resolves (symlinks followed) inside its image
folder, every file found by listing a folder inside `src`, and every file written inside `out`
(`rsunivlm_jax.data.paths`); class names become mask file names through `paths.file_component`.
A malformed or hostile annotation raises `DataError` naming the file, the record and the field.

Formats (`CONVERTERS`): ``dior_rsvg``, ``rsvqa`` (LR and HR), ``karpathy_captions``
(UCM-captions, Sydney-captions, RSICD), ``levir_cc``, ``cd_folders`` (LEVIR-CD / LEVIR-MCI style
A/B/label), ``scene_folders`` (AID, NWPU-RESISC45, UCM, SIRI-WHU), ``semseg`` (class-index PNG
masks). Aliases: see `ALIASES`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from rsunivlm_jax import fileio, tasks
from rsunivlm_jax.data.paths import DataError, child_inside, file_component, resolve_inside
from rsunivlm_jax.data.records import write_jsonl

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
BACKGROUND_NAMES = ("background", "others", "other", "clutter", "unlabeled", "unlabelled", "ignore")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _out_path(out: Path, rel: str, **where) -> Path:
    """``out / rel`` for writing, refused unless it (and any existing symlinked folder on the way)
    stays inside `out`."""
    out.mkdir(parents=True, exist_ok=True)
    return resolve_inside(out, rel, what="output path", **where)


def _add_image(src: Path, out: Path, rel: str, **where) -> str:
    """Links/copies `src` to ``out/images/<rel>``; returns the record path ``images/<rel>``."""
    rel = "images/" + rel.replace("\\", "/")
    _link_or_copy(src, _out_path(out, rel, **where))
    return rel


def _open_array(path: Path) -> np.ndarray:
    """Pixels of an image / mask file; DataError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot be decoded as an image ({e})", file=path) from None


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except OSError as e:
        raise DataError(f"cannot be read as an image ({e})", file=path) from None


def _record(rid: str, task: str, image, question: str, answer: str, gt: dict) -> dict:
    n = len(image) if isinstance(image, list) else 1
    return {"id": rid, "task": task, "image": image,
            "conversations": [{"from": "human", "value": tasks.image_prefix(n) + question},
                              {"from": "gpt", "value": answer}],
            "gt": gt}


def _write(out: Path, fmt: str, splits: dict[str, list]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    files, counts = {}, {}
    for name, recs in splits.items():
        if not recs:
            continue
        fname = f"{file_component(name, what='split name', field='split')}.jsonl"
        write_jsonl(recs, _out_path(out, fname, field="split"))
        files[name], counts[name] = fname, len(recs)
    if not files:
        raise ValueError(f"{fmt}: no records were produced")
    fileio.atomic_write_json(out / "manifest.json",
                             {"format": fmt, "image_root": ".", "splits": files, "counts": counts})
    return out


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"not valid JSON ({e})", file=path) from None


def _field(obj, key, *, file, record=None, types=(str,), default=...):
    """obj[key] checked against `types`; DataError naming file / record / field otherwise."""
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", file=file, record=record)
    if key not in obj:
        if default is not ...:
            return default
        raise DataError("missing", file=file, record=record, field=key)
    value = obj[key]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
        raise DataError(f"expected {' or '.join(t.__name__ for t in types)}, got {value!r}", file=file,
                        record=record, field=key)
    return value


def _sentences(im, *, file, record) -> list[str]:
    sents = _field(im, "sentences", file=file, record=record, types=(list,), default=[])
    refs = []
    for s in sents:
        if not isinstance(s, dict) or not isinstance(s.get("raw", ""), str):
            raise DataError(f"each sentence must be an object with a string 'raw', got {s!r}", file=file,
                            record=record, field="sentences")
        if s.get("raw", "").strip():
            refs.append(s["raw"].strip())
    return refs


def _find_dir(src: Path, names: Iterable[str], what: str) -> Path:
    for n in names:
        if (src / n).is_dir():
            child_inside(src, src / n, what=f"{what} folder", file=src / n)
            return src / n
    raise FileNotFoundError(f"{src}: no {what} folder (looked for {', '.join(names)})")


def _images_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _listed(root: Path, path: Path) -> Path:
    """A file found by listing a folder under `root`, refused when a symlink leads outside `root`."""
    child_inside(root, path, what="file", file=path)
    return path


def _clean_label(name: str) -> str:
    """Class names usable as mask labels / answers: no '*', ',' or newline; '_' -> ' '."""
    return re.sub(r"[*,\n]+", " ", name.replace("_", " ")).strip()


def _find_image(d: Path, stem: str, **where) -> Path | None:
    """``d/<stem>.<ext>`` for the first image extension that exists; `stem` comes from data and is
    confined to `d` (symlinks included)."""
    for ext in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS):
        p = resolve_inside(d, f"{stem}{ext}", **where)
        if p.is_file():
            return d / f"{stem}{ext}"
    return None


# --------------------------------------------------------------------------------------------
# DIOR-RSVG (visual grounding)
# --------------------------------------------------------------------------------------------

def convert_dior_rsvg(src, out, *, emit_ref: bool = False) -> Path:
    """DIOR-RSVG -> ``[VG]`` records (and optionally ``[REF]`` region descriptions).

    Layout::

        src/JPEGImages/<name>.jpg
        src/Annotations/<name>.xml      VOC-style: <filename>, <size><width/><height/></size>,
                                        one <object> per expression with <name> (category),
                                        <bndbox><xmin/><ymin/><xmax/><ymax/></bndbox>, <description>
        src/{train,val,test}.txt        optional; one integer per line = index into the list of
                                        all expressions, enumerated over Annotations/*.xml sorted
                                        by file name and objects in file order (as the RSVG loader)

    Without split files everything goes to split ``all``.
    """
    src, out = Path(src), Path(out)
    img_dir = _find_dir(src, ["JPEGImages", "images", "Images"], "image")
    ann_dir = _find_dir(src, ["Annotations", "annotations"], "annotation")
    exprs = []   # (xml stem, filename, box, category, description, W, H)
    for xml in sorted(ann_dir.glob("*.xml")):
        _listed(src, xml)
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as e:
            raise DataError(f"not valid XML ({e})", file=xml) from None
        fname = (root.findtext("filename") or f"{xml.stem}.jpg").strip()
        where = dict(file=xml, field="filename")
        img = resolve_inside(img_dir, fname, what="image file", **where)
        img = img_dir / fname
        if not img.is_file():
            img = _find_image(img_dir, Path(fname).stem, what="image file", **where) or img
        w, h = root.findtext("size/width"), root.findtext("size/height")
        try:
            w, h = (float(w), float(h)) if w is not None and h is not None else _image_size(img)
        except (ValueError, OSError) as e:
            raise DataError(f"no usable image size ({e})", file=xml, field="size") from None
        for k, obj in enumerate(root.iter("object")):
            box = []
            for key in ("xmin", "ymin", "xmax", "ymax"):
                try:
                    box.append(float(obj.findtext(f"bndbox/{key}")))
                except (TypeError, ValueError):
                    raise DataError(f"bndbox/{key} is missing or not a number", file=xml, record=k,
                                    field=key) from None
            desc = (obj.findtext("description") or obj.findtext("name") or "").strip()
            exprs.append((xml.stem, img, box, (obj.findtext("name") or "").strip(), desc, float(w), float(h)))
    split_ids = {}
    for name in ("train", "val", "test"):
        f = src / f"{name}.txt"
        if f.is_file():
            ids = []
            for tok in f.read_text().split():
                if not tok.isdigit() or int(tok) >= len(exprs):
                    raise DataError(f"{tok!r} is not an expression index in 0..{len(exprs) - 1}", file=f,
                                    record=tok)
                ids.append(int(tok))
            split_ids[name] = ids
    if not split_ids:
        split_ids = {"all": list(range(len(exprs)))}
    splits = {}
    for name, ids in split_ids.items():
        recs = []
        for i in ids:
            stem, img, box, cat, desc, w, h = exprs[i]
            rel = _add_image(img, out, img.name, file=img, record=i, field="filename")
            ww, hh = (int(w) if w.is_integer() else w), (int(h) if h.is_integer() else h)
            recs.append(_record(f"dior_rsvg-{i}", "vg", rel, tasks.make_prompt("vg", expression=desc),
                                tasks.format_boxes(box, w, h),
                                {"boxes_px": [box], "width": ww, "height": hh,
                                 "category": cat, "expression": desc}))
            if emit_ref:
                answer = f"1 {cat}."
                recs.append(_record(f"dior_rsvg-{i}-ref", "ref", rel, tasks.format_ref_question(box, w, h),
                                    answer, {"box_px": box, "answer": answer, "width": ww, "height": hh}))
        splits[name] = recs
    return _write(out, "dior_rsvg", splits)


# --------------------------------------------------------------------------------------------
# RSVQA-LR / RSVQA-HR
# --------------------------------------------------------------------------------------------

def convert_rsvqa(src, out, *, image_dir: str | None = None) -> Path:
    """RSVQA-LR / -HR -> ``[VQA]`` records.

    Layout (per split, same file-name prefix, e.g. ``LR_split_train`` or ``USGS_split_test``)::

        src/<prefix>_questions.json   {"questions": [{"id", "img_id", "type", "question",
                                                       "answers_ids": [...], "active": true}, ...]}
        src/<prefix>_answers.json     {"answers": [{"id", "question_id", "answer", "active"}, ...]}
        src/<prefix>_images.json      {"images": [{"id", "questions_ids", "active"}, ...]} (optional)
        src/Images_LR/<img_id>.tif    (LR) or src/Data/<img_id>.tif (HR); or pass `image_dir`

    The split name is ``train`` / ``val`` / ``test`` / ``test_phili`` when found in the prefix,
    else the prefix. Inactive questions/answers are dropped. gt: answer + question_type.
    """
    src, out = Path(src), Path(out)
    img_dir = Path(image_dir) if image_dir else _find_dir(
        src, ["Images_LR", "Images_HR", "Data", "Images", "images"], "image")
    splits = {}
    for qfile in sorted(src.glob("*_questions.json")):
        prefix = qfile.name[: -len("_questions.json")]
        afile = src / f"{prefix}_answers.json"
        if not afile.is_file():
            raise FileNotFoundError(f"{qfile}: matching answers file {afile.name} not found")
        m = re.search(r"(test_phili|train|val|test)", prefix, re.I)
        split = m.group(1).lower() if m else prefix
        questions = _field(_read_json(_listed(src, qfile)), "questions", file=qfile, types=(list,))
        answers = {}
        for k, a in enumerate(_field(_read_json(_listed(src, afile)), "answers", file=afile, types=(list,))):
            answers[_field(a, "id", file=afile, record=k, types=(int, str))] = a
        ifile = src / f"{prefix}_images.json"
        inactive_images = set()
        if ifile.is_file():
            for k, im in enumerate(_field(_read_json(_listed(src, ifile)), "images", file=ifile, types=(list,))):
                if not _field(im, "active", file=ifile, record=k, types=(bool,), default=True):
                    inactive_images.add(_field(im, "id", file=ifile, record=k, types=(int, str)))
        recs = []
        for k, q in enumerate(questions):
            qid = q.get("id", k) if isinstance(q, dict) else k
            where = dict(file=qfile, record=qid)
            img_id = _field(q, "img_id", types=(int, str), **where)
            if not q.get("active", True) or img_id in inactive_images:
                continue
            ids = _field(q, "answers_ids", types=(list,), default=[], **where)
            ans = [answers[a] for a in ids if isinstance(a, (int, str)) and a in answers
                   and answers[a].get("active", True)]
            if not ans:
                continue
            img = _find_image(img_dir, str(img_id), what="image id", field="img_id", **where)
            if img is None:
                raise FileNotFoundError(f"{qfile}: image {img_id} not found in {img_dir}")
            rel = _add_image(img, out, img.name, field="img_id", **where)
            answer = str(_field(ans[0], "answer", file=afile, record=ans[0].get("id"), types=(str, int, float))).strip()
            question = _field(q, "question", **where).strip()
            recs.append(_record(f"rsvqa-{split}-{qid}", "vqa", rel,
                                tasks.make_prompt("vqa", question=question), answer,
                                {"answer": answer, "question_type": q.get("type", "")}))
        splits[split] = splits.get(split, []) + recs
    if not splits:
        raise FileNotFoundError(f"{src}: no *_questions.json files")
    return _write(out, "rsvqa", splits)


# --------------------------------------------------------------------------------------------
# Karpathy-style captions: UCM-captions, Sydney-captions, RSICD
# --------------------------------------------------------------------------------------------

def convert_karpathy_captions(src, out, *, per_sentence: bool = False) -> Path:
    """UCM / Sydney / RSICD captions (Karpathy split json) -> ``[CAP]`` records.

    Layout::

        src/dataset_<name>.json   {"images": [{"filename": "1.tif", "split": "train|val|test",
                                               "sentences": [{"raw": "..."}, ...],
                                               "filepath": "<optional subfolder>"}, ...]}
        src/imgs/<filename>       (or images/, Images/, RSICD_images/)

    One record per image (answer: the first sentence; gt references: all sentences), or one per
    sentence with `per_sentence` (for training).
    """
    src, out = Path(src), Path(out)
    files = sorted(src.glob("dataset*.json"))
    if not files:
        raise FileNotFoundError(f"{src}: no dataset_*.json caption file")
    img_dir = _find_dir(src, ["imgs", "images", "Images", "RSICD_images"], "image")
    ann = _listed(src, files[0])
    splits: dict[str, list] = {}
    for k, im in enumerate(_field(_read_json(ann), "images", file=ann, types=(list,))):
        where = dict(file=ann, record=k)
        sub = _field(im, "filepath", default="", **where) or ""
        name = _field(im, "filename", **where)
        rel_in = f"{sub}/{name}" if sub else name
        if sub:
            resolve_inside(img_dir, sub, what="image folder", field="filepath", **where)
        img = resolve_inside(img_dir, rel_in, what="image file", field="filename", **where)
        if not img.is_file():
            raise FileNotFoundError(f"{ann}: image {img_dir / rel_in} not found")
        refs = _sentences(im, **where)
        if not refs:
            continue
        rel = _add_image(img_dir / rel_in, out, rel_in, field="filename", **where)
        split = _field(im, "split", default="all", **where)
        answers = refs if per_sentence else refs[:1]
        for j, a in enumerate(answers):
            rid = f"{ann.stem}-{im.get('imgid', k)}" + (f"-{j}" if per_sentence else "")
            splits.setdefault(split, []).append(
                _record(rid, "cap", rel, tasks.make_prompt("cap"), a, {"references": refs}))
    return _write(out, "karpathy_captions", splits)


# --------------------------------------------------------------------------------------------
# LEVIR-CC (change captioning)
# --------------------------------------------------------------------------------------------

def convert_levir_cc(src, out) -> Path:
    """LEVIR-CC -> two-image ``[CCD]`` records.

    Layout::

        src/LevirCCcaptions.json   {"images": [{"filepath": "train", "filename": "train_000001.png",
                                                "split": "train", "sentences": [{"raw": " ..."}],
                                                "changeflag": 0|1}, ...]}
        src/images/<filepath>/A/<filename>   before
        src/images/<filepath>/B/<filename>   after

    Answer: the first sentence; gt references: all five.
    """
    src, out = Path(src), Path(out)
    ann = src / "LevirCCcaptions.json"
    if not ann.is_file():
        raise FileNotFoundError(f"{src}: LevirCCcaptions.json not found")
    img_root = _find_dir(src, ["images", "Images"], "image")
    _listed(src, ann)
    splits: dict[str, list] = {}
    for k, im in enumerate(_field(_read_json(ann), "images", file=ann, types=(list,))):
        where = dict(file=ann, record=k)
        split = _field(im, "split", default="", **where)
        fp = _field(im, "filepath", default="", **where) or split
        name = _field(im, "filename", **where)
        if fp:
            resolve_inside(img_root, fp, what="image folder", field="filepath", **where)
        pair = []
        for side in ("A", "B"):
            rel_in = f"{fp}/{side}/{name}" if fp else f"{side}/{name}"
            p = resolve_inside(img_root, rel_in, what="image file", field="filename", **where)
            if not p.is_file():
                raise FileNotFoundError(f"{ann}: image {img_root / rel_in} not found")
            pair.append(_add_image(img_root / rel_in, out, rel_in, field="filename", **where))
        refs = _sentences(im, **where)
        if not refs:
            continue
        flag = _field(im, "changeflag", types=(int, bool), default=0, **where)
        splits.setdefault(split or fp or "all", []).append(
            _record(f"levir_cc-{Path(name).stem}", "ccd", pair, tasks.make_prompt("ccd"), refs[0],
                    {"references": refs, "changeflag": int(flag)}))
    return _write(out, "levir_cc", splits)


# --------------------------------------------------------------------------------------------
# Change detection folders (LEVIR-CD / LEVIR-MCI style)
# --------------------------------------------------------------------------------------------

def _binary_mask(path: Path) -> np.ndarray:
    arr = _open_array(path)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1)
    return arr > 0


def _save_mask(mask: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path)


def convert_cd_folders(src, out, *, class_name: str = "building",
                       grid_size: int = tasks.DEFAULT_GRID_SIZE) -> Path:
    """Change-detection folders -> two-image ``[SEG]`` change-mask records (task ``cd``).

    Layout (split folders optional; without them the split is ``all``)::

        src/[train|val|test/]A/<name>.png       before image
        src/[train|val|test/]B/<name>.png       after image (same name)
        src/[train|val|test/]label/<name>.png   change mask, non-zero = changed `class_name`

    The mask is re-saved as binary (255 = changed) under ``out/masks/``.
    """
    src, out = Path(src), Path(out)
    label = _clean_label(class_name)
    label_file = file_component(label, what="class name", field="class_name")
    roots = {d.name: d for d in sorted(src.iterdir()) if d.is_dir() and (d / "A").is_dir()}
    if (src / "A").is_dir():
        roots = {"all": src}
    if not roots:
        raise FileNotFoundError(f"{src}: no A/ B/ label/ folders")
    splits = {}
    for split, d in roots.items():
        _listed(src, d)
        split_file = file_component(split, what="split folder", file=d)
        lab_dir = _find_dir(d, ["label", "labels", "OUT", "gt"], "label")
        recs = []
        for a in _images_in(d / "A"):
            b = _find_image(d / "B", a.stem, what="image file", file=d / "B")
            lab = _find_image(lab_dir, a.stem, what="label file", file=lab_dir)
            if b is None or lab is None:
                raise FileNotFoundError(f"{d}: {a.name} lacks a B/ image or a label/ mask")
            for f in (a, b, lab):
                _listed(src, f)
            mask = _binary_mask(lab)
            h, w = mask.shape
            mrel = f"masks/{split_file}/{file_component(a.stem, file=a)}_cd_{label_file}.png"
            _save_mask(mask, _out_path(out, mrel, file=lab))
            pair = [_add_image(a, out, f"{split_file}/A/{a.name}", file=a),
                    _add_image(b, out, f"{split_file}/B/{b.name}", file=b)]
            recs.append(_record(f"cd-{split}-{a.stem}", "cd", pair, tasks.make_prompt("cd", label=label),
                                tasks.encode_mask(tasks.mask_to_grid(mask, grid_size), label),
                                {"mask": mrel, "label": label, "width": w, "height": h}))
        splits[split] = recs
    return _write(out, "cd_folders", splits)


# --------------------------------------------------------------------------------------------
# Scene classification folders (AID, NWPU-RESISC45, UCM, SIRI-WHU)
# --------------------------------------------------------------------------------------------

def convert_scene_folders(src, out, *, test_fraction: float = 0.0, seed: int = 0) -> Path:
    """One folder per class -> ``[CLS]`` records listing all classes.

    Layout::

        src/<class name>/<image files>      e.g. AID/Airport/airport_1.jpg (classes sorted
                                            case-insensitively)

    Class names are the folder names with ``_`` -> space. Without `test_fraction` the split is
    ``all``; otherwise a per-class seeded permutation puts that fraction into ``test``.
    """
    src, out = Path(src), Path(out)
    class_dirs = sorted((d for d in src.iterdir() if d.is_dir() and _images_in(d)), key=lambda d: d.name.lower())
    if not class_dirs:
        raise FileNotFoundError(f"{src}: no class folders with images")
    classes = [_clean_label(d.name) for d in class_dirs]
    rng = np.random.default_rng(seed)
    splits: dict[str, list] = {}
    for d, cls in zip(class_dirs, classes):
        _listed(src, d)
        imgs = _images_in(d)
        n_test = int(round(test_fraction * len(imgs)))
        test = set(rng.permutation(len(imgs))[:n_test].tolist())
        for i, img in enumerate(imgs):
            _listed(src, img)
            split = "test" if i in test else ("train" if test_fraction > 0 else "all")
            rel = _add_image(img, out, f"{d.name}/{img.name}", file=img)
            splits.setdefault(split, []).append(
                _record(f"cls-{d.name}-{img.stem}", "cls", rel, tasks.make_prompt("cls", classes=classes),
                        cls, {"label": cls, "classes": classes}))
    return _write(out, "scene_folders", splits)


# --------------------------------------------------------------------------------------------
# Semantic segmentation with class-index PNG masks
# --------------------------------------------------------------------------------------------

def convert_semseg(src, out, *, grid_size: int = tasks.DEFAULT_GRID_SIZE, ignore_index: int = 255,
                   min_fraction: float = 0.0) -> Path:
    """Class-index masks -> one ``[SEG]`` record per class present in an image.

    Layout (split folders optional; without them the split is ``all``)::

        src/classes.json                       ["background", "building", "road", ...] (index =
                                               class id) or {"<id>": "<name>"}
        src/[train|val|test/]images/<stem>.<png|jpg|tif>
        src/[train|val|test/]masks/<stem>.png  single-channel class ids; `ignore_index` = unlabelled

    Classes named like background (`BACKGROUND_NAMES`) are never targets. A class is used when it
    covers more than `min_fraction` of the pixels and at least one grid cell. The per-class binary
    mask is written to ``out/masks/`` (255 = class).
    """
    src, out = Path(src), Path(out)
    cfile = src / "classes.json"
    if not cfile.is_file():
        raise FileNotFoundError(f"{src}: classes.json not found")
    raw = _read_json(_listed(src, cfile))
    if isinstance(raw, list):
        names = dict(enumerate(raw))
    elif isinstance(raw, dict) and all(isinstance(k, str) and k.strip().isdigit() for k in raw):
        names = {int(k): v for k, v in raw.items()}
    else:
        raise DataError('expected a list of class names or an object {"<id>": "<name>"}', file=cfile)
    for i, n in names.items():
        if not isinstance(n, str) or not _clean_label(n):
            raise DataError(f"class name {n!r} is not a non-empty string", file=cfile, record=i)
    names = {i: _clean_label(n) for i, n in names.items()}
    files = {i: file_component(n, what="class name", file=cfile, record=i) for i, n in names.items()
             if n.lower() not in BACKGROUND_NAMES}
    roots = {d.name: d for d in sorted(src.iterdir()) if d.is_dir() and (d / "masks").is_dir()}
    if (src / "masks").is_dir():
        roots = {"all": src}
    if not roots:
        raise FileNotFoundError(f"{src}: no images/ + masks/ folders")
    splits = {}
    for split, d in roots.items():
        _listed(src, d)
        split_file = file_component(split, what="split folder", file=d)
        img_dir = _find_dir(d, ["images", "img", "Images"], "image")
        recs = []
        for mpath in sorted((d / "masks").glob("*.png")):
            _listed(src, mpath)
            img = _find_image(img_dir, mpath.stem, what="image file", file=img_dir)
            if img is None:
                raise FileNotFoundError(f"{d}: no image for mask {mpath.name}")
            _listed(src, img)
            labels = _open_array(mpath)
            if labels.ndim != 2:
                raise DataError(f"class-index masks must be single-channel, got shape {labels.shape}", file=mpath)
            h, w = labels.shape
            grid = tasks.mask_to_grid(labels.astype(np.int32), grid_size)
            rel = _add_image(img, out, f"{split_file}/{img.name}", file=img)
            stem = file_component(mpath.stem, file=mpath)
            for cid in np.unique(labels):
                cid = int(cid)
                name = names.get(cid)
                if cid == ignore_index or name is None or name.lower() in BACKGROUND_NAMES:
                    continue
                full = labels == cid
                if full.mean() <= min_fraction or not (grid == cid).any():
                    continue
                mrel = f"masks/{split_file}/{stem}_{files[cid]}.png"
                _save_mask(full, _out_path(out, mrel, file=cfile, record=cid))
                recs.append(_record(f"seg-{split}-{mpath.stem}-{name.replace(' ', '_')}", "seg", rel,
                                    tasks.make_prompt("seg", label=name),
                                    tasks.encode_mask(grid == cid, name),
                                    {"mask": mrel, "label": name, "width": w, "height": h}))
        splits[split] = recs
    return _write(out, "semseg", splits)


CONVERTERS: dict[str, Callable[..., Path]] = {
    "dior_rsvg": convert_dior_rsvg,
    "rsvqa": convert_rsvqa,
    "karpathy_captions": convert_karpathy_captions,
    "levir_cc": convert_levir_cc,
    "cd_folders": convert_cd_folders,
    "scene_folders": convert_scene_folders,
    "semseg": convert_semseg,
}
ALIASES = {
    "rsvqa_lr": "rsvqa", "rsvqa_hr": "rsvqa",
    "ucm_captions": "karpathy_captions", "sydney_captions": "karpathy_captions", "rsicd": "karpathy_captions",
    "levir_cd": "cd_folders", "levir_mci": "cd_folders",
    "aid": "scene_folders", "nwpu_resisc45": "scene_folders", "ucm": "scene_folders", "siri_whu": "scene_folders",
}


def convert(fmt: str, src, out, **kwargs) -> Path:
    """Runs the converter named `fmt` (or an alias); returns the output directory."""
    key = ALIASES.get(fmt.lower().replace("-", "_"), fmt.lower().replace("-", "_"))
    if key not in CONVERTERS:
        raise ValueError(f"unknown format {fmt!r}; known: {sorted(CONVERTERS)} and aliases {sorted(ALIASES)}")
    return CONVERTERS[key](src, out, **kwargs)
