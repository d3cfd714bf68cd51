"""One scene -> one instruction record per task (prompts and answer text from `rsunivlm_jax.tasks`),
plus the images and masks those records reference."""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from rsunivlm_jax import tasks as T
from rsunivlm_jax.data.synthetic.change import make_change
from rsunivlm_jax.data.synthetic.raster import position_of_box, render, vg_candidates, visible_instances
from rsunivlm_jax.data.synthetic.scene import (ALL_TASKS, CLASS_ID, CLASS_NAMES, COUNTABLE, REF_CATEGORIES,
                                               SCENE_CLASSES, Sample, Scene)
from rsunivlm_jax.data.synthetic.text import captions, vqa_question


def _record(rid, task, image, question, answer, gt):
    return {"id": rid, "task": task, "image": image,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
            "gt": gt}


def check_split(split: str):
    if not isinstance(split, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", split):
        raise ValueError(f"split must match [A-Za-z0-9_-]+, got {split!r}")


def check_tasks(tasks):
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown or empty tasks {unknown or tasks}; expected a subset of {ALL_TASKS}")
    return tasks


def make_sample(scene: Scene, index: int = 0, split: str = "train", grid_size: int = 24,
                tasks: Sequence[str] = ALL_TASKS) -> Sample:
    """All records of one scene plus the images and masks they reference (relative paths).

    Each task draws from its own random stream, so the records of one task do not depend on which
    other tasks are requested.
    """
    check_split(split)
    tasks = check_tasks(tasks)
    if grid_size < 1:
        raise ValueError(f"grid_size must be >= 1, got {grid_size}")
    size = scene.image_size
    stem = f"{split}_{index:06d}"
    rgb, label = render(scene)
    label_u8 = label.astype(np.uint8)
    img = f"images/{stem}.png"
    images, masks, records = {}, {}, []

    def rid(task):
        return f"syn-{split}-{index:06d}-{task}"

    def rng_for(task):
        return np.random.default_rng([scene.seed, 100 + ALL_TASKS.index(task)])

    images[img] = rgb          # every task uses it (the change pair's before image too)
    inst = visible_instances(scene, COUNTABLE)

    for task in tasks:
        rng = rng_for(task)
        if task == "cap":
            refs = captions(scene)
            records.append(_record(rid(task), task, img, T.make_user_message("cap"), refs[0],
                                   {"references": list(refs)}))
        elif task == "vqa":
            q, a, qtype = vqa_question(scene, rng)
            records.append(_record(rid(task), task, img, T.make_user_message("vqa", question=q), a,
                                   {"answer": a, "question_type": qtype}))
        elif task == "cls":
            records.append(_record(rid(task), task, img,
                                   T.make_user_message("cls", classes=list(SCENE_CLASSES)),
                                   scene.scene_class,
                                   {"label": scene.scene_class, "classes": list(SCENE_CLASSES)}))
        elif task == "vg":
            cands = vg_candidates(inst, size)
            o = cands[rng.integers(len(cands))]
            expr = f"the {o.colour} {o.category} at the {position_of_box(o.box, size, size)}"
            records.append(_record(rid(task), task, img,
                                   T.make_user_message("vg", expression=f"Where is {expr}?"),
                                   T.format_boxes([o.box], size, size),
                                   {"boxes_px": [list(o.box)], "width": size, "height": size}))
        elif task == "ref":
            cands = [o for o in inst if o.category in REF_CATEGORIES]
            o = cands[rng.integers(len(cands))]
            answer = f"1 {o.category} at the {position_of_box(o.box, size, size)}."
            records.append(_record(rid(task), task, img,
                                   T.image_prefix(1) + T.format_ref_question(o.box, size, size), answer,
                                   {"box_px": list(o.box), "answer": answer, "width": size, "height": size}))
        elif task == "seg":
            frac = np.bincount(label_u8.ravel(), minlength=len(CLASS_NAMES)) / label.size
            grid_labels = T.mask_to_grid(label_u8, grid_size)
            cands = [c for c in range(len(CLASS_NAMES))
                     if frac[c] >= 0.04 and (grid_labels == c).any()]
            if not cands:
                cands = [int(np.argmax(frac))]
            cid = int(cands[rng.integers(len(cands))])
            name = CLASS_NAMES[cid]
            full = label_u8 == cid
            path = f"masks/{stem}_{name}.png"
            masks[path] = full
            records.append(_record(rid(task), task, img, T.make_user_message("seg", label=name),
                                   T.encode_mask(T.mask_to_grid(full, grid_size), name),
                                   {"mask": path, "label": name, "width": size, "height": size,
                                    "grid_size": grid_size}))
    if "ccd" in tasks or "cd" in tasks:
        change = make_change(scene)
        rgb_b, label_b = render(change.after)
        pair = [img, f"images/{stem}_b.png"]
        images[pair[1]] = rgb_b
        if "ccd" in tasks:
            records.append(_record(rid("ccd"), "ccd", pair, T.make_user_message("ccd"),
                                   change.references[0], {"references": list(change.references)}))
        if "cd" in tasks:
            changed = T.change_mask(label, label_b, CLASS_ID[change.label])
            path = f"masks/{stem}_cd_{change.label}.png"
            masks[path] = changed
            records.append(_record(rid("cd"), "cd", pair, T.make_user_message("cd", label=change.label),
                                   T.encode_mask(T.mask_to_grid(changed, grid_size), change.label),
                                   {"mask": path, "label": change.label, "width": size, "height": size,
                                    "grid_size": grid_size}))
    order = {t: i for i, t in enumerate(ALL_TASKS)}
    records.sort(key=lambda r: order[r["task"]])
    return Sample(records, images, masks)


def make_records(scene: Scene, index: int = 0, split: str = "train", grid_size: int = 24,
                 tasks: Sequence[str] = ALL_TASKS) -> list[dict]:
    """The instruction records of one scene (see `make_sample` for the files they reference)."""
    return make_sample(scene, index, split, grid_size, tasks).records

