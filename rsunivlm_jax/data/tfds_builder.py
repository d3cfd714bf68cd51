"""TFDS builder (array_record, no TensorFlow) for instruction records, and a Grain-ready reader.

Writing: `build_tfds(records_source, out_dir)` validates the records (strict or lenient), reads each
image file as **encoded bytes** (PNG / JPEG / TIFF as stored; optionally decoded once to verify),
and writes ``<out_dir>/rsunivlm_instructions/1.0.0/rsunivlm_instructions-<split>.array_record-*``
plus ``dataset_info.json`` / ``features.json``. TFDS `Image` features are not used: given numpy
arrays they need TensorFlow, and raw bytes keep decoding identical to the JSONL path.

Features per example:
    id: Text, task: Text ("" if untagged), granularity: int32, record: Text (the normalised record
    as JSON, without absolute paths), images: Sequence(bytes), gt_mask: bytes ("" if none).

Reading: `TfdsSource(dir, split)` wraps ``tfds.builder_from_directory(dir).as_data_source(split)``
and returns records with ``image_bytes`` that the pipeline decodes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from rsunivlm_jax.data import paths, preprocess
from rsunivlm_jax.data.records import RecordError, RecordSource, SkipReport, load_source, resolve_path

BUILDER_NAME = "rsunivlm_instructions"


class RsunivlmInstructions(tfds.core.GeneratorBasedBuilder):
    """Instruction records with encoded image bytes; splits given as {split: [record dicts]}."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # TFDS derives a checksums path from the package location, which needs the optional
    # `importlib_resources` module for editable installs; this builder downloads nothing.
    code_path = None
    url_infos = None

    def __init__(self, *, split_records: dict | None = None, verify_images: bool = False,
                 strict: bool = False, **kwargs):
        self._split_records = split_records or {}
        self._verify_images = verify_images
        self._strict = strict
        self.report = SkipReport()
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="RSUniVLM instruction records (LLaVA-style) with encoded images.",
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "task": tfds.features.Text(),
                "granularity": tfds.features.Scalar(np.int32),
                "record": tfds.features.Text(),
                "images": tfds.features.Sequence(tfds.features.Scalar(np.object_)),
                "gt_mask": tfds.features.Scalar(np.object_),
            }),
        )

    def _split_generators(self, dl_manager):
        return {name: self._generate_examples(recs) for name, recs in self._split_records.items()}

    def _generate_examples(self, recs):
        for i, rec in enumerate(recs):
            try:
                example = encode_record(rec, verify=self._verify_images)
            except RecordError as e:
                if self._strict:
                    raise
                self.report.add(e)
                continue
            yield f"{i:09d}", example


def _read_bytes(path: str, rec: dict, verify: bool) -> bytes:
    if not os.path.isfile(path):
        raise RecordError("missing_image", f"file not found: {path}", rec.get("id"), rec.get("source"))
    data = Path(path).read_bytes()
    if verify:
        try:
            preprocess.open_image(data, name=path)
        except preprocess.ImageDecodeError as e:
            raise RecordError(e.reason, str(e), rec.get("id"), rec.get("source")) from None
    return data


def encode_record(rec: dict, verify: bool = False) -> dict:
    """A validated record -> TFDS example dict (image files read as bytes).

    With ``rec["root"]`` every file read (images, ``gt["mask"]``) must lie inside that root
    (`records.resolve_path`, symlinks followed); a gt mask is only read when a root is given."""
    root = rec.get("root")
    image_paths = list(rec["images"])
    if root:
        for p in image_paths:
            if not paths.is_inside(root, p):
                raise RecordError("path_outside_root", f"image path {p!r} resolves outside {root}",
                                  rec.get("id"), rec.get("source"))
    images = [_read_bytes(p, rec, verify) for p in image_paths]
    gt = dict(rec.get("gt") or {})
    mask_bytes = b""
    if gt.get("mask") and root:
        mpath = resolve_path(root, gt["mask"], rec.get("id"), rec.get("source"), what="gt mask")
        mask_bytes = _read_bytes(str(mpath), rec, False)
    stored = {k: rec[k] for k in ("id", "task", "image", "conversations", "granularity") if k in rec}
    stored["gt"] = gt
    return {"id": str(rec.get("id")), "task": rec.get("task") or "",
            "granularity": np.int32(rec.get("granularity") or 0),
            "record": json.dumps(stored, ensure_ascii=False),
            "images": images, "gt_mask": mask_bytes}


def build_tfds(splits: dict, out_dir: str | os.PathLike, *, strict: bool = False,
               verify_images: bool = False) -> Path:
    """Writes a TFDS array_record dataset from {split: record path or RecordSource}.

    Returns the versioned dataset directory to pass to `TfdsSource` /
    `tfds.builder_from_directory`.
    """
    split_records = {}
    report = SkipReport()
    for name, src in splits.items():
        if not isinstance(src, RecordSource):
            src = load_source(src, strict=strict)
        report.merge(src.report)
        split_records[name] = [dict(r, root=src.root) for r in src.records]
    builder = RsunivlmInstructions(split_records=split_records, verify_images=verify_images,
                                   strict=strict, data_dir=str(out_dir), file_format="array_record")
    builder.download_and_prepare()
    builder.report.merge(report)
    if builder.report.skipped:
        print(f"TFDS build: {builder.report.summary()}")
    return Path(builder.data_dir)


class TfdsSource:
    """Random-access record source over a TFDS array_record split (picklable for Grain workers)."""

    def __init__(self, data_dir: str | os.PathLike, split: str = "train", name: str | None = None):
        self.data_dir, self.split = str(data_dir), split
        self.name = name or f"{Path(data_dir).parent.name}:{split}"
        self._src = None

    @property
    def source(self):
        if self._src is None:
            self._src = tfds.builder_from_directory(self.data_dir).as_data_source(self.split)
        return self._src

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        ex = self.source[int(i)]
        rec = json.loads(_text(ex["record"]))
        rec["image_bytes"] = list(ex["images"])
        rec["images"] = []
        rec["source"] = f"{self.name}[{int(i)}]"
        if ex.get("gt_mask"):
            rec["gt_mask_bytes"] = ex["gt_mask"]
        return rec

    def granularities(self) -> np.ndarray:
        return np.asarray([self.source[i]["granularity"] for i in range(len(self))], dtype=np.int32)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getstate__(self):
        return {"data_dir": self.data_dir, "split": self.split, "name": self.name, "_src": None}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"TfdsSource({self.data_dir!r}, split={self.split!r})"


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)


def tfds_splits(data_dir: str | os.PathLike) -> Sequence[str]:
    """Split names of a built TFDS dataset directory."""
    return list(tfds.builder_from_directory(str(data_dir)).info.splits.keys())
