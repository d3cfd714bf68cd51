"""Converters from the native layouts of public RS datasets to instruction records (with ``gt``).

Each converter reads `src` in the layout documented in its docstring (and in docs/data.md),
links or copies the images into ``out/images/...``, writes any derived binary masks into
``out/masks/...``, and writes ``out/<split>.jsonl`` plus ``out/manifest.json``
(``{"format", "image_root": ".", "splits": {split: file}, "counts": {split: n}}``). The output
directory is a self-contained record source for `records.load_source` / the pipeline / the TFDS
builder. Prompts and answers come from `rsunivlm_jax.tasks`.

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

from rsunivlm_jax import tasks
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


def _add_image(src: Path, out: Path, rel: str) -> str:
    """Links/copies `src` to ``out/images/<rel>``; returns the record path ``images/<rel>``."""
    rel = "images/" + rel.replace("\\", "/")
    _link_or_copy(src, out / rel)
    return rel


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


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
        write_jsonl(recs, out / f"{name}.jsonl")
        files[name], counts[name] = f"{name}.jsonl", len(recs)
    if not files:
        raise ValueError(f"{fmt}: no records were produced")
    (out / "manifest.json").write_text(json.dumps(
        {"format": fmt, "image_root": ".", "splits": files, "counts": counts}, indent=2) + "\n")
    return out


def _find_dir(src: Path, names: Iterable[str], what: str) -> Path:
    for n in names:
        if (src / n).is_dir():
            return src / n
    raise FileNotFoundError(f"{src}: no {what} folder (looked for {', '.join(names)})")


def _images_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _clean_label(name: str) -> str:
    """Class names usable as mask labels / answers: no '*', ',' or newline; '_' -> ' '."""
    return re.sub(r"[*,\n]+", " ", name.replace("_", " ")).strip()


def _find_image(d: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS):
        p = d / f"{stem}{ext}"
        if p.is_file():
            return p
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
        root = ET.parse(xml).getroot()
        fname = (root.findtext("filename") or f"{xml.stem}.jpg").strip()
        img = img_dir / fname
        if not img.is_file():
            img = _find_image(img_dir, Path(fname).stem) or img
        w, h = root.findtext("size/width"), root.findtext("size/height")
        if w is None or h is None:
            w, h = _image_size(img)
        for obj in root.iter("object"):
            box = [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            desc = (obj.findtext("description") or obj.findtext("name") or "").strip()
            exprs.append((xml.stem, img, box, (obj.findtext("name") or "").strip(), desc, float(w), float(h)))
    split_ids = {}
    for name in ("train", "val", "test"):
        f = src / f"{name}.txt"
        if f.is_file():
            split_ids[name] = [int(x) for x in f.read_text().split() if x.strip()]
    if not split_ids:
        split_ids = {"all": list(range(len(exprs)))}
    splits = {}
    for name, ids in split_ids.items():
        recs = []
        for i in ids:
            stem, img, box, cat, desc, w, h = exprs[i]
            rel = _add_image(img, out, img.name)
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
        questions = json.loads(qfile.read_text(encoding="utf-8"))["questions"]
        answers = {a["id"]: a for a in json.loads(afile.read_text(encoding="utf-8"))["answers"]}
        ifile = src / f"{prefix}_images.json"
        inactive_images = set()
        if ifile.is_file():
            inactive_images = {im["id"] for im in json.loads(ifile.read_text(encoding="utf-8"))["images"]
                               if not im.get("active", True)}
        recs = []
        for q in questions:
            if not q.get("active", True) or q["img_id"] in inactive_images:
                continue
            ans = [answers[a] for a in q.get("answers_ids", []) if a in answers and answers[a].get("active", True)]
            if not ans:
                continue
            img = _find_image(img_dir, str(q["img_id"]))
            if img is None:
                raise FileNotFoundError(f"{qfile}: image {q['img_id']} not found in {img_dir}")
            rel = _add_image(img, out, img.name)
            answer = str(ans[0]["answer"]).strip()
            recs.append(_record(f"rsvqa-{split}-{q['id']}", "vqa", rel,
                                tasks.make_prompt("vqa", question=q["question"].strip()), answer,
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
    data = json.loads(files[0].read_text(encoding="utf-8"))
    splits: dict[str, list] = {}
    for k, im in enumerate(data["images"]):
        sub = im.get("filepath") or ""
        img = img_dir / sub / im["filename"]
        if not img.is_file():
            raise FileNotFoundError(f"{files[0]}: image {img} not found")
        refs = [s["raw"].strip() for s in im.get("sentences", []) if s.get("raw", "").strip()]
        if not refs:
            continue
        rel = _add_image(img, out, f"{sub}/{im['filename']}" if sub else im["filename"])
        split = im.get("split", "all")
        answers = refs if per_sentence else refs[:1]
        for j, a in enumerate(answers):
            rid = f"{files[0].stem}-{im.get('imgid', k)}" + (f"-{j}" if per_sentence else "")
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
    splits: dict[str, list] = {}
    for k, im in enumerate(json.loads(ann.read_text(encoding="utf-8"))["images"]):
        fp = im.get("filepath") or im.get("split", "")
        pair = []
        for side in ("A", "B"):
            p = img_root / fp / side / im["filename"]
            if not p.is_file():
                raise FileNotFoundError(f"{ann}: image {p} not found")
            pair.append(_add_image(p, out, f"{fp}/{side}/{im['filename']}"))
        refs = [s["raw"].strip() for s in im.get("sentences", []) if s.get("raw", "").strip()]
        if not refs:
            continue
        splits.setdefault(im.get("split", fp or "all"), []).append(
            _record(f"levir_cc-{Path(im['filename']).stem}", "ccd", pair, tasks.make_prompt("ccd"), refs[0],
                    {"references": refs, "changeflag": int(im.get("changeflag", 0))}))
    return _write(out, "levir_cc", splits)


# --------------------------------------------------------------------------------------------
# Change detection folders (LEVIR-CD / LEVIR-MCI style)
# --------------------------------------------------------------------------------------------

def _binary_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        arr = np.asarray(im)
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
    roots = {d.name: d for d in sorted(src.iterdir()) if d.is_dir() and (d / "A").is_dir()}
    if (src / "A").is_dir():
        roots = {"all": src}
    if not roots:
        raise FileNotFoundError(f"{src}: no A/ B/ label/ folders")
    splits = {}
    for split, d in roots.items():
        lab_dir = _find_dir(d, ["label", "labels", "OUT", "gt"], "label")
        recs = []
        for a in _images_in(d / "A"):
            b = _find_image(d / "B", a.stem)
            lab = _find_image(lab_dir, a.stem)
            if b is None or lab is None:
                raise FileNotFoundError(f"{d}: {a.name} lacks a B/ image or a label/ mask")
            mask = _binary_mask(lab)
            h, w = mask.shape
            mrel = f"masks/{split}/{a.stem}_cd_{label.replace(' ', '_')}.png"
            _save_mask(mask, out / mrel)
            pair = [_add_image(a, out, f"{split}/A/{a.name}"), _add_image(b, out, f"{split}/B/{b.name}")]
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
        imgs = _images_in(d)
        n_test = int(round(test_fraction * len(imgs)))
        test = set(rng.permutation(len(imgs))[:n_test].tolist())
        for i, img in enumerate(imgs):
            split = "test" if i in test else ("train" if test_fraction > 0 else "all")
            rel = _add_image(img, out, f"{d.name}/{img.name}")
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
    raw = json.loads(cfile.read_text(encoding="utf-8"))
    names = {i: n for i, n in enumerate(raw)} if isinstance(raw, list) else {int(k): v for k, v in raw.items()}
    names = {i: _clean_label(n) for i, n in names.items()}
    roots = {d.name: d for d in sorted(src.iterdir()) if d.is_dir() and (d / "masks").is_dir()}
    if (src / "masks").is_dir():
        roots = {"all": src}
    if not roots:
        raise FileNotFoundError(f"{src}: no images/ + masks/ folders")
    splits = {}
    for split, d in roots.items():
        img_dir = _find_dir(d, ["images", "img", "Images"], "image")
        recs = []
        for mpath in sorted((d / "masks").glob("*.png")):
            img = _find_image(img_dir, mpath.stem)
            if img is None:
                raise FileNotFoundError(f"{d}: no image for mask {mpath.name}")
            with Image.open(mpath) as im:
                labels = np.asarray(im)
            if labels.ndim != 2:
                raise ValueError(f"{mpath}: class-index masks must be single-channel, got shape {labels.shape}")
            h, w = labels.shape
            grid = tasks.mask_to_grid(labels.astype(np.int32), grid_size)
            rel = _add_image(img, out, f"{split}/{img.name}")
            for cid in np.unique(labels):
                cid = int(cid)
                name = names.get(cid)
                if cid == ignore_index or name is None or name.lower() in BACKGROUND_NAMES:
                    continue
                full = labels == cid
                if full.mean() <= min_fraction or not (grid == cid).any():
                    continue
                mrel = f"masks/{split}/{mpath.stem}_{name.replace(' ', '_')}.png"
                _save_mask(full, out / mrel)
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
