"""LLaVA-style instruction records (JSON / JSONL + image root): reading, validation, skip counting.

Record schema: docs/data.md.
Counterpart: `LazySupervisedDataset` in LLaVA-NeXT `llava/train/train.py`, which reads the same
``{"id", "image", "conversations"}`` records but validates nothing.

Validation happens in two places: `validate_record` (here; structure, text, paths, tags, boxes,
masks; no pixel decoding) when a source is loaded, and image decoding + tokenisation in the
pipeline (`missing_image`, `corrupt_image`, `image_too_large`, `over_length`). Strict mode raises
`RecordError` naming the record and reason; lenient mode skips and counts in a `SkipReport`.
"""
from __future__ import annotations

import collections
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from rsunivlm_jax import fileio, tasks
from rsunivlm_jax.data import paths
from rsunivlm_jax.router import route

# Skip / error reasons (keys of SkipReport.counts).
REASONS = {
    "bad_json": "line or file is not valid JSON",
    "not_utf8": "bytes are not valid UTF-8 (or a string holds lone surrogates)",
    "bad_record": "record is not an object or has a wrongly typed field",
    "empty_conversation": "no conversation turns",
    "bad_turn": "a turn lacks 'from'/'value' or has an unknown role",
    "missing_answer": "no non-empty assistant ('gpt') answer after the question",
    "placeholder_mismatch": "number of <image> placeholders differs from the number of images",
    "unknown_tag": "the prompt starts with a [TAG] that is not a known task tag",
    "unknown_task": "the 'task' field is not one of the known tasks",
    "tag_mismatch": "the prompt tag or image count does not fit the record's task",
    "path_outside_root": "an image or mask path is absolute or escapes the image root",
    "bad_image_path": "an image path is empty or not a string",
    "missing_image": "an image file does not exist",
    "corrupt_image": "an image cannot be decoded (truncated or corrupt bytes)",
    "image_too_large": "an image has more pixels than allowed",
    "too_many_images": "more images than the pipeline's max_images",
    "box_outside_image": "a box lies outside the image (pixel gt) or outside 0-100 (text)",
    "bad_box": "a box is malformed (x2 < x1, wrong length, no box in a [VG] answer)",
    "malformed_mask": "a [SEG] answer is not a valid row-RLE mask of the grid size",
    "bad_gt": "the ground-truth object is malformed",
    "over_length": "the tokenised sample does not fit max_text_len / max_seq_len",
}


class RecordError(ValueError):
    """A bad record: names the record, the source and the reason key."""

    def __init__(self, reason: str, detail: str, record_id: Any = None, source: str | None = None):
        self.reason, self.detail, self.record_id, self.source = reason, detail, record_id, source
        where = f"record {record_id!r}" if record_id is not None else "record"
        if source:
            where += f" in {source}"
        super().__init__(f"{where}: {reason}: {detail}")


@dataclass
class SkipReport:
    """Counts of skipped records by reason, with a few example ids per reason."""
    counts: collections.Counter = field(default_factory=collections.Counter)
    examples: dict = field(default_factory=dict)
    kept: int = 0

    def add(self, err: RecordError) -> None:
        self.counts[err.reason] += 1
        ex = self.examples.setdefault(err.reason, [])
        if len(ex) < 3:
            ex.append(str(err))

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: "SkipReport") -> "SkipReport":
        self.counts.update(other.counts)
        for k, v in other.examples.items():
            self.examples.setdefault(k, []).extend(v[: max(0, 3 - len(self.examples.get(k, [])))])
        self.kept += other.kept
        return self

    def summary(self) -> str:
        lines = [f"kept {self.kept}, skipped {self.skipped}"]
        for reason, n in self.counts.most_common():
            lines.append(f"  {reason}: {n}" + (f"  (e.g. {self.examples[reason][0]})"
                                               if self.examples.get(reason) else ""))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Reading JSON / JSONL
# --------------------------------------------------------------------------------------------

def iter_raw_records(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """Yields (location, record or RecordError) from a ``.jsonl`` file (one object per line) or a
    ``.json`` file (a list of objects). Each JSONL line is decoded separately, so one non-UTF-8 or
    broken line does not lose the rest of the file."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".json":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            yield str(path), RecordError("not_utf8", f"{e}", source=str(path))
            return
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield str(path), RecordError("bad_json", f"{e}", source=str(path))
            return
        if isinstance(obj, dict) and isinstance(obj.get("records"), list):
            obj = obj["records"]
        if not isinstance(obj, list):
            yield str(path), RecordError("bad_json", "expected a JSON list of records", source=str(path))
            return
        for i, rec in enumerate(obj):
            yield f"{path}[{i}]", rec
        return
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        loc = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield loc, RecordError("not_utf8", f"{e}", source=loc)
            continue
        try:
            yield loc, json.loads(line)
        except json.JSONDecodeError as e:
            yield loc, RecordError("bad_json", f"{e}", source=loc)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

_RAW_BOX_RE = re.compile(r"\[([\d.,\s-]+)\]")


def resolve_path(root: str | os.PathLike, rel: Any, record_id: Any = None, source: str | None = None,
                 what: str = "image") -> Path:
    """`root` / `rel` through `paths.resolve_inside`: absolute paths, ``..`` components and symlinks
    leading outside the root are refused with a `RecordError` (path_outside_root / bad_image_path)."""
    try:
        return paths.resolve_inside(root, rel, what=f"{what} path")
    except paths.DataError as e:
        reason = "path_outside_root" if e.reason == "path_outside_root" else "bad_image_path"
        raise RecordError(reason, e.detail, record_id, source) from None


def _check_utf8(value: Any, record_id, source) -> None:
    """Strings must be encodable as UTF-8 (JSON '\\udc80' escapes give lone surrogates)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise RecordError("not_utf8", f"text is not valid UTF-8 ({e.reason} at {e.start})",
                              record_id, source) from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_utf8(k, record_id, source)
            _check_utf8(v, record_id, source)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_utf8(v, record_id, source)


def _raw_boxes(text: str) -> list[list[float]]:
    out = []
    for inner in _RAW_BOX_RE.findall(text):
        try:
            nums = [float(p) for p in inner.split(",")]
        except ValueError:
            continue
        if len(nums) >= 4:
            out.append(nums[:4])
    return out


def _check_text_boxes(text: str, record_id, source, where: str) -> None:
    for b in _raw_boxes(text):
        if any(v < 0 or v > 100 for v in b):
            raise RecordError("box_outside_image", f"{where} box {b} is outside 0-100", record_id, source)
        if b[2] < b[0] or b[3] < b[1]:
            raise RecordError("bad_box", f"{where} box {b} has x2 < x1 or y2 < y1", record_id, source)


def _check_px_box(box, width, height, record_id, source) -> None:
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        raise RecordError("bad_box", f"gt box {box!r} is not [x1, y1, x2, y2]", record_id, source)
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        raise RecordError("bad_box", f"gt box {list(box)} has x2 < x1 or y2 < y1", record_id, source)
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise RecordError("box_outside_image", f"gt box {list(box)} is outside the {width}x{height} image",
                          record_id, source)


def _gt_size(gt: dict, record_id, source) -> tuple[float, float]:
    w, h = gt.get("width"), gt.get("height")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (w, h)):
        raise RecordError("bad_gt", f"gt width/height {w!r}x{h!r} must be positive numbers",
                          record_id, source)
    return w, h


def validate_record(rec: Any, root: str | os.PathLike, *, source: str | None = None,
                    check_files: bool = True, grid_size: int = tasks.DEFAULT_GRID_SIZE,
                    max_images: int | None = None, fallback_id: Any = None) -> dict:
    """Checks one raw record and returns its normalised form; raises `RecordError`.

    Normalised record: ``id``, ``task`` (None if untagged), ``image`` (list of relative paths),
    ``images`` (absolute paths), ``conversations``, ``gt``, ``granularity`` (router index of the
    first user message), ``source``.
    """
    if isinstance(rec, RecordError):
        raise rec
    if not isinstance(rec, dict):
        raise RecordError("bad_record", f"expected a JSON object, got {type(rec).__name__}",
                          fallback_id, source)
    rid = rec.get("id", fallback_id)
    _check_utf8(rec, rid, source)
    if rid is not None and not isinstance(rid, (str, int)):
        raise RecordError("bad_record", f"id must be a string or integer, got {type(rid).__name__}",
                          fallback_id, source)

    # Conversation
    conv = rec.get("conversations")
    if conv is None or (isinstance(conv, list) and not conv):
        raise RecordError("empty_conversation", "no conversation turns", rid, source)
    if not isinstance(conv, list):
        raise RecordError("bad_record", "'conversations' must be a list", rid, source)
    turns = []
    for i, t in enumerate(conv):
        if not isinstance(t, dict) or t.get("from") not in ("human", "gpt", "user", "assistant") \
                or not isinstance(t.get("value"), str):
            raise RecordError("bad_turn", f"turn {i} must be {{'from': 'human'|'gpt', 'value': str}}",
                              rid, source)
        turns.append({"from": "human" if t["from"] in ("human", "user") else "gpt", "value": t["value"]})
    humans = [i for i, t in enumerate(turns) if t["from"] == "human"]
    if not humans:
        raise RecordError("missing_answer", "no user ('human') turn", rid, source)
    answers = [t for t in turns[humans[0]:] if t["from"] == "gpt"]
    if not answers or any(not t["value"].strip() for t in answers):
        raise RecordError("missing_answer", "no non-empty 'gpt' answer after the question", rid, source)
    first_user = turns[humans[0]]["value"]

    # Images and placeholders
    image = rec.get("image")
    if image is None:
        rel = []
    elif isinstance(image, str):
        rel = [image]
    elif isinstance(image, list):
        rel = image
    else:
        raise RecordError("bad_image_path", f"'image' must be a path or a list of paths, got {image!r}",
                          rid, source)
    paths = [str(resolve_path(root, p, rid, source)) for p in rel]
    if max_images is not None and len(paths) > max_images:
        raise RecordError("too_many_images", f"{len(paths)} images > max_images={max_images}", rid, source)
    n_ph = sum(t["value"].count(tasks.IMAGE_PLACEHOLDER) for t in turns)
    if n_ph != len(paths):
        raise RecordError("placeholder_mismatch",
                          f"{n_ph} <image> placeholder(s) for {len(paths)} image(s)", rid, source)
    if any(tasks.IMAGE_PLACEHOLDER in t["value"] for t in turns if t["from"] == "gpt"):
        raise RecordError("placeholder_mismatch", "an answer contains <image>", rid, source)
    if check_files:
        for p in paths:
            if not os.path.isfile(p):
                raise RecordError("missing_image", f"image file not found: {p}", rid, source)

    # Tags and task
    tag = tasks.leading_tag(first_user)
    if tag is not None and tag not in tasks.TAGS:
        raise RecordError("unknown_tag", f"unknown task tag {tag} (known: {' '.join(tasks.TAGS)})",
                          rid, source)
    task = rec.get("task")
    if task is not None and task not in tasks.TASKS:
        raise RecordError("unknown_task", f"task {task!r} is not one of {tasks.TASKS}", rid, source)
    inferred = tasks.task_of_prompt(first_user, len(paths))
    if task is None:
        task = inferred
    elif tag is not None and tasks.TASK_TAG[task] != tag:
        raise RecordError("tag_mismatch", f"task {task!r} expects {tasks.TASK_TAG[task]}, prompt has {tag}",
                          rid, source)
    if task is not None and tag is not None and len(paths) != tasks.TASK_NUM_IMAGES[task]:
        raise RecordError("tag_mismatch", f"task {task!r} expects {tasks.TASK_NUM_IMAGES[task]} image(s), "
                          f"record has {len(paths)}", rid, source)

    # Task-specific answer and ground-truth checks (every user turn's tag decides its answer format)
    gt = rec.get("gt") or {}
    if not isinstance(gt, dict):
        raise RecordError("bad_gt", "'gt' must be an object", rid, source)
    for i, t in enumerate(turns):
        if t["from"] != "human" or i + 1 >= len(turns) or turns[i + 1]["from"] != "gpt":
            continue
        q, a = t["value"], turns[i + 1]["value"]
        qtag = tasks.leading_tag(q)
        if qtag in ("[VG]", "[REF]"):
            _check_text_boxes(q, rid, source, "question")
        if qtag == "[VG]":
            _check_text_boxes(a, rid, source, "answer")
            if not _raw_boxes(a):
                raise RecordError("bad_box", "[VG] answer contains no [x1, y1, x2, y2] box", rid, source)
        if qtag == "[SEG]":
            grid = int(gt.get("grid_size", grid_size)) if isinstance(gt, dict) else grid_size
            _, problems = tasks.decode_mask(a, grid)
            if problems:
                raise RecordError("malformed_mask", "; ".join(problems[:3]), rid, source)
    if task == "vg" and "boxes_px" in gt:
        w, h = _gt_size(gt, rid, source)
        if not isinstance(gt["boxes_px"], list) or not gt["boxes_px"]:
            raise RecordError("bad_gt", "gt boxes_px must be a non-empty list", rid, source)
        for b in gt["boxes_px"]:
            _check_px_box(b, w, h, rid, source)
    if task == "ref" and "box_px" in gt:
        w, h = _gt_size(gt, rid, source)
        _check_px_box(gt["box_px"], w, h, rid, source)
    if "mask" in gt:  # any task: the TFDS builder and the scorers read it
        mpath = resolve_path(root, gt["mask"], rid, source, what="gt mask")
        if check_files and task in ("seg", "cd") and not mpath.is_file():
            raise RecordError("missing_image", f"mask file not found: {mpath}", rid, source)

    return {"id": rid, "task": task, "image": list(rel), "images": paths, "conversations": turns,
            "gt": gt, "granularity": route(first_user), "source": source}


# --------------------------------------------------------------------------------------------
# Loading sources
# --------------------------------------------------------------------------------------------

def load_records(path: str | os.PathLike, root: str | os.PathLike | None = None, *, strict: bool = False,
                 report: SkipReport | None = None, check_files: bool = True,
                 grid_size: int = tasks.DEFAULT_GRID_SIZE, max_images: int | None = None) -> list[dict]:
    """Reads and validates all records of a JSON / JSONL file; image paths are relative to `root`
    (default: the file's directory). Strict: raise the first `RecordError`; lenient: skip + count."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    report = report if report is not None else SkipReport()
    out = []
    for loc, raw in iter_raw_records(path):
        try:
            out.append(validate_record(raw, root, source=loc, check_files=check_files,
                                       grid_size=grid_size, max_images=max_images, fallback_id=loc))
        except RecordError as e:
            if strict:
                raise
            report.add(e)
    report.kept += len(out)
    return out


def record_files(path: str | os.PathLike, split: str | None = None) -> tuple[list[Path], Path]:
    """Record files and image root of a source path.

    A file is its own source (root: its directory). A directory may hold ``manifest.json``
    (``{"image_root": ..., "splits": {name: file}}``) or ``<split>.jsonl`` / ``.json`` files;
    `split` picks one (default: all files).
    """
    p = Path(path)
    if p.is_file():
        return [p], p.parent
    if not p.is_dir():
        raise FileNotFoundError(f"record source {p} does not exist")
    manifest = p / "manifest.json"
    root = p
    files: dict[str, Path] = {}
    if manifest.is_file():
        m = _read_manifest(manifest)
        root = paths.resolve_inside(p, m.get("image_root", "."), what="image root", file=manifest,
                                    field="image_root")
        files = {k: paths.resolve_inside(p, v, what="split file", file=manifest, field=f"splits.{k}")
                 for k, v in m.get("splits", {}).items()}
    if not files:
        files = {f.stem: f for f in sorted(p.glob("*.jsonl"))}
        files.update({f.stem: f for f in sorted(p.glob("*.json"))
                      if f.name not in ("manifest.json", "dataset_info.json", "features.json")
                      and f.stem not in files})
    if split is not None:
        if split not in files:
            raise FileNotFoundError(f"{p}: no split {split!r} (have {sorted(files)})")
        return [files[split]], root
    if not files:
        raise FileNotFoundError(f"{p}: no *.jsonl / *.json record files")
    return list(files.values()), root


def _read_manifest(path: Path) -> dict:
    """``manifest.json`` as a dict with a string `image_root` and a {str: str} `splits`; DataError otherwise."""
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise paths.DataError(f"not valid JSON ({e})", file=path) from None
    if not isinstance(m, dict):
        raise paths.DataError(f"expected a JSON object, got {type(m).__name__}", file=path)
    if not isinstance(m.get("image_root", "."), str):
        raise paths.DataError(f"must be a relative path string, got {m['image_root']!r}", file=path,
                              field="image_root")
    splits = m.get("splits", {})
    if not isinstance(splits, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in splits.items()):
        raise paths.DataError(f"must map split names to file names, got {splits!r}", file=path, field="splits")
    return m


@dataclass
class RecordSource:
    """Validated records of one source; a random-access source for `grain.MapDataset.source`."""
    name: str
    root: str
    records: list
    report: SkipReport = field(default_factory=SkipReport)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return self.records[i]

    def __repr__(self) -> str:
        return f"RecordSource({self.name!r}, {len(self.records)} records, root={self.root!r})"


def load_source(path: str | os.PathLike, root: str | os.PathLike | None = None, *,
                split: str | None = None, strict: bool = False, name: str | None = None,
                check_files: bool = True, grid_size: int = tasks.DEFAULT_GRID_SIZE,
                max_images: int | None = None) -> RecordSource:
    """Loads a JSON / JSONL file or a record directory (see `record_files`) as a `RecordSource`."""
    files, default_root = record_files(path, split)
    root = Path(root) if root is not None else default_root
    report = SkipReport()
    recs: list[dict] = []
    for f in files:
        recs += load_records(f, root, strict=strict, report=report, check_files=check_files,
                             grid_size=grid_size, max_images=max_images)
    return RecordSource(name or Path(path).stem, str(root), recs, report)


def count_by(records: Iterable[dict], key: str = "task") -> dict:
    """Counts of records by a field (None shown as 'untagged')."""
    c = collections.Counter((r.get(key) if r.get(key) is not None else "untagged") for r in records)
    return dict(sorted(c.items(), key=lambda kv: str(kv[0])))


def write_jsonl(records: Sequence[dict], path: str | os.PathLike) -> Path:
    """Writes records as JSONL (UTF-8, one object per line) to a temporary name, then renames it."""
    return fileio.atomic_write_jsonl(path, records)
