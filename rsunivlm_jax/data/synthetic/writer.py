"""Writing a split: PNGs and `<split>.jsonl` (optionally in worker processes; byte-identical either
way), and packing the splits into a TFDS array_record dataset."""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
from PIL import Image

from rsunivlm_jax import tasks as T
from rsunivlm_jax.data.synthetic.layouts import scene_for
from rsunivlm_jax.data.synthetic.sample import check_split, check_tasks, make_sample
from rsunivlm_jax.data.synthetic.scene import ALL_TASKS, MIN_IMAGE_SIZE


def _save_png(array: np.ndarray, path: str):
    if array.dtype == np.bool_:
        image = Image.fromarray(array.astype(np.uint8) * 255, mode="L")
    else:
        image = Image.fromarray(array, mode="RGB")
    tmp = path + ".tmp"
    image.save(tmp, format="PNG", compress_level=1)   # fast; still byte-deterministic
    os.replace(tmp, path)


def iter_samples(num: int, image_size: int = 64, seed: int = 0, split: str = "train",
                 grid_size: int = 24, tasks: Sequence[str] = ALL_TASKS, start: int = 0):
    """Yields `Sample`s for scene indices start .. start + num - 1 (what `write_dataset` writes)."""
    for index in range(start, start + num):
        scene = scene_for(seed, split, index, image_size)
        yield make_sample(scene, index, split, grid_size, tasks)


def _write_scene(job: tuple) -> list[dict]:
    """Worker: generates scene `index`, writes its PNGs under `out_dir` and returns its records."""
    out_dir, index, image_size, seed, split, grid_size, tasks = job
    sample = make_sample(scene_for(seed, split, index, image_size), index, split, grid_size, tasks)
    for rel, arr in list(sample.images.items()) + list(sample.masks.items()):
        _save_png(arr, os.path.join(out_dir, rel))
    return sample.records


def write_dataset(out_dir: str, num: int, image_size: int = 64, seed: int = 0, split: str = "train",
                  grid_size: int = 24, tasks: Sequence[str] = ALL_TASKS, fmt: str = "jsonl",
                  progress: bool = True, num_workers: int = 0) -> str:
    """Writes `num` scenes (one record per requested task each) and returns the records' path.

    Layout under `out_dir`: ``images/<split>_<index>.png`` (and ``..._b.png``, the after image of
    the change pair), ``masks/<split>_<index>_<label>.png`` and ``..._cd_<label>.png`` (binary,
    255 = foreground), and ``<split>.jsonl``. Scene classes cycle through `SCENE_CLASSES`, so they
    are exactly balanced when `num` is a multiple of 6.

    ``num_workers > 0`` generates scenes in that many spawned processes; the files are
    byte-identical to a single-process run (every scene depends only on its own index). Spawned
    workers re-import the calling script, so scripts need the ``if __name__ == "__main__":`` guard.

    ``fmt="tfds"`` also packs every ``<split>.jsonl`` under `out_dir` into a TFDS array_record
    dataset under ``<out_dir>/tfds`` (rebuilt each call, via `rsunivlm_jax.data.tfds_builder`) and
    returns that dataset's directory (for `TfdsSource` / `tfds.builder_from_directory`).
    """
    import multiprocessing

    from tqdm import tqdm

    if fmt not in ("jsonl", "tfds"):
        raise ValueError(f"fmt must be 'jsonl' (JSONL + PNG) or 'tfds', got {fmt!r}")
    if not isinstance(num, (int, np.integer)) or num < 0:
        raise ValueError(f"num must be a non-negative integer, got {num!r}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    check_split(split)
    tasks = check_tasks(tasks)
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    path = os.path.join(out_dir, f"{split}.jsonl")
    tmp = path + ".tmp"
    jobs = ((out_dir, i, int(image_size), int(seed), split, int(grid_size), tasks) for i in range(int(num)))
    pool = multiprocessing.get_context("spawn").Pool(num_workers) if num_workers > 0 else None
    try:
        results = pool.imap(_write_scene, jobs, chunksize=8) if pool else map(_write_scene, jobs)
        with open(tmp, "w", encoding="utf-8") as f:
            for recs in tqdm(results, total=int(num), desc=f"synthetic {split}", unit="scene",
                             disable=not progress):
                for rec in recs:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    finally:
        if pool:
            pool.close()
            pool.join()
    os.replace(tmp, path)
    if fmt == "tfds":
        return _pack_tfds(out_dir)
    return path


def _pack_tfds(out_dir: str) -> str:
    """Packs all ``<split>.jsonl`` files of `out_dir` into ``<out_dir>/tfds`` (strict validation)."""
    import glob
    import shutil

    from rsunivlm_jax.data import records, tfds_builder

    target = os.path.join(out_dir, "tfds")
    if os.path.isdir(target):
        shutil.rmtree(target)
    splits = {}
    for f in sorted(glob.glob(os.path.join(out_dir, "*.jsonl"))):
        name = os.path.splitext(os.path.basename(f))[0]
        grid = T.DEFAULT_GRID_SIZE          # the mask grid of this split's records
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                gt = json.loads(line).get("gt") or {}
                if "grid_size" in gt:
                    grid = gt["grid_size"]
                    break
        splits[name] = records.load_source(f, out_dir, strict=True, grid_size=int(grid), name=name)
    return str(tfds_builder.build_tfds(splits, target, strict=True))

