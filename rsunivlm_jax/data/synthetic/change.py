"""Before/after pairs: buildings or a road added to or removed from a scene, with change captions."""
from __future__ import annotations

import numpy as np

from rsunivlm_jax.data.synthetic.layouts import Builder, overlaps
from rsunivlm_jax.data.synthetic.raster import position_of_box, rasterise
from rsunivlm_jax.data.synthetic.scene import CHANGE_CLASSES, CLASS_ID, NUMBER_WORDS, Change, Scene, SceneObject


def _footprint(obj: SceneObject):
    x0, y0, x1, y1 = obj.shape.bounds()
    return (x0, y0, x1 + obj.height, y1 + obj.height)


def _change_builder(scene: Scene, rng) -> Builder:
    b = Builder(rng)
    b.regions = list(scene.regions)
    b.objects = list(scene.objects)
    b.blocked = [(_footprint(o), o.category) for o in scene.objects]
    return b


def _drop_trees_under(b: Builder, box):
    keep = [o for o in b.objects if not (o.category == "tree" and overlaps(_footprint(o), box, 0.01))]
    b.objects = keep
    b.blocked = [(_footprint(o), o.category) for o in keep]


def _try_build_buildings(scene, rng):
    b = _change_builder(scene, rng)
    big = scene.scene_class == "industrial"
    size = (0.26, 0.32) if big else (0.16, 0.21)
    n_target = 1 if big or rng.uniform() < 0.5 else 2
    added = 0
    for _ in range(n_target):
        for _ in range(60):
            trial = _change_builder(Scene(scene.image_size, scene.scene_class, tuple(b.regions),
                                          tuple(b.objects), scene.seed), rng)
            trial.blocked = [(f, c) for f, c in trial.blocked if c != "tree"]
            if trial.building(size, ("red", "blue", "white"), ("flat",) if big else ("gable_h", "gable_v"),
                              tries=1):
                new = trial.objects[-1]
                _drop_trees_under(b, _footprint(new))
                b.objects.append(new)
                b.blocked.append((_footprint(new), "building"))
                added += 1
                break
    return b if added else None


def _try_remove_buildings(scene, rng):
    idx = [i for i, o in enumerate(scene.objects) if o.category == "building"]
    if not idx:
        return None
    n = 2 if len(idx) >= 3 and rng.uniform() < 0.5 else 1
    drop = set(int(i) for i in rng.choice(idx, size=n, replace=False))
    b = _change_builder(scene, rng)
    b.objects = [o for i, o in enumerate(scene.objects) if i not in drop]
    return b


def _try_build_road(scene, rng):
    b = _change_builder(scene, rng)
    existing = [o for o in scene.objects if o.category == "road"]
    for _ in range(40):
        vertical = bool(rng.integers(2))
        centre, width = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.18)
        box = (centre - width / 2, 0.0, centre + width / 2, 1.0) if vertical else \
              (0.0, centre - width / 2, 1.0, centre + width / 2)
        if any((r.style == "v") == vertical and overlaps(r.shape.params, box, 0.08) for r in existing):
            continue
        if not b.free(box, margin=0.02, ignore=("tree", "road")):
            continue
        if not b._all_ground(box, lambda g: g != CLASS_ID["water"], n=12):
            continue
        _drop_trees_under(b, box)
        b.road(vertical, centre, width)
        return b
    return None


def _try_remove_road(scene, rng):
    idx = [i for i, o in enumerate(scene.objects) if o.category == "road"]
    if not idx:
        return None
    drop = int(idx[rng.integers(len(idx))])
    box = scene.objects[drop].shape.params
    b = _change_builder(scene, rng)

    def on_road(o):
        x0, y0, x1, y1 = o.shape.bounds()
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        return box[0] <= cx < box[2] and box[1] <= cy < box[3]
    b.objects = [o for i, o in enumerate(scene.objects)
                 if i != drop and not (o.category == "vehicle" and on_road(o))]
    return b


_CHANGE_KINDS = {"building": ("build_buildings", "remove_buildings"), "road": ("build_road", "remove_road")}
_CHANGE_FNS = {"build_buildings": _try_build_buildings, "remove_buildings": _try_remove_buildings,
               "build_road": _try_build_road, "remove_road": _try_remove_road}


def _change_caption(kind: str, n: int, pos: str | None) -> tuple[str, str]:
    at = f" at the {pos}" if pos else ""
    word = "a" if n == 1 else NUMBER_WORDS[n]
    noun = "building" if n == 1 else "buildings"
    be, have = ("is", "has") if n == 1 else ("are", "have")
    if kind == "build_buildings":
        return (f"{word} new {noun} {be} built{at}.",
                f"{NUMBER_WORDS[n]} {noun} {have} been constructed{at}.")
    if kind == "remove_buildings":
        return (f"{word} {noun} {be} demolished{at}.", f"{NUMBER_WORDS[n]} {noun} {have} been removed{at}.")
    if kind == "build_road":
        return (f"a new road is built{at}.", f"a road has been constructed{at}.")
    return (f"the road{at} is removed.", f"a road has disappeared{at}.")


def make_change(scene: Scene) -> Change:
    """A before/after pair from `scene` (the before image): buildings or a road added or removed.

    The changed class is building or road with equal probability (the other one when the first
    is impossible); the changed area is non-empty and spans at least 14 % of the image side in
    both directions. Deterministic in `scene.seed`.
    """
    rng = np.random.default_rng([scene.seed, 7])
    first = CHANGE_CLASSES[int(rng.integers(2))]
    order = [first] + [c for c in CHANGE_CLASSES if c != first]
    _, label_a, _ = rasterise(scene)
    size = scene.image_size
    for label in order * 4:                     # a few rounds: placements are random
        kinds = list(_CHANGE_KINDS[label])
        if rng.integers(2):
            kinds.reverse()
        for kind in kinds:
            b = _CHANGE_FNS[kind](scene, rng)
            if b is None:
                continue
            after = Scene(size, scene.scene_class, tuple(b.regions), tuple(b.objects), scene.seed)
            _, label_b, _ = rasterise(after)
            cid = CLASS_ID[label]
            changed = (label_a == cid) != (label_b == cid)
            ys, xs = np.nonzero(changed)
            min_extent = 0.14 * size
            if len(xs) == 0 or xs.max() - xs.min() + 1 < min_extent or ys.max() - ys.min() + 1 < min_extent:
                continue
            if label == "building":
                before_ids = {id(o) for o in scene.objects}
                if kind == "build_buildings":
                    moved = [o for o in after.objects if o.category == "building" and id(o) not in before_ids]
                else:
                    after_ids = {id(o) for o in after.objects}
                    moved = [o for o in scene.objects if o.category == "building" and id(o) not in after_ids]
                cells = {position_of_box([v * size for v in o.shape.params], size, size) for o in moved}
                n = len(moved)
            else:
                box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                cells, n = {position_of_box(box, size, size)}, 1
            pos = cells.pop() if len(cells) == 1 else None
            return Change(after, label, kind, _change_caption(kind, n, pos))
    raise RuntimeError("no valid change for this scene")

