"""Scene layouts: a placement helper (`Builder`) and one generator per scene class; `generate_scene`
resamples a layout until its rendered label map derives the intended class."""
from __future__ import annotations

import math
import zlib
from typing import Callable

import numpy as np

from rsunivlm_jax.data.synthetic.raster import derive_scene_class, scene_stats, vg_candidates
from rsunivlm_jax.data.synthetic.scene import (BUILDING_COLOURS, CLASS_ID, CONCRETE_RGB, CROP_RGBS, FOREST_FLOOR_RGB,
                                               LAWN_RGB, MIN_IMAGE_SIZE, ROAD_RGB, ROCK_RGB, SAND_RGB, SCENE_CLASSES,
                                               SHIP_COLOURS, SOIL_RGB, TREE_RGB, VEHICLE_COLOURS, WATER_RGB, Region,
                                               Scene, SceneObject, Shape)


def overlaps(a, b, margin: float = 0.0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or
                a[3] + margin <= b[1] or b[3] + margin <= a[1])


_UNIT_STEPS = {n: np.linspace(0.0, 1.0, n) for n in (3, 6, 12)}


class Builder:
    """Accumulates regions and objects, with placement checks in normalised coordinates."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.regions: list[Region] = []
        self.objects: list[SceneObject] = []
        self.blocked: list[tuple] = []      # (footprint box, category) for non-overlap checks

    # ---- ground ----
    def region(self, shape, label, rgb, texture="plain", tex=()):
        self.regions.append(Region(shape, label, tuple(int(v) for v in rgb), texture, tuple(tex)))

    def ground_label(self, x, y) -> np.ndarray:
        out = np.full(np.broadcast_shapes(np.shape(x), np.shape(y)), -1, int)
        for r in self.regions:
            out = np.where(r.shape.contains(x, y), CLASS_ID[r.label], out)
        return out

    def _all_ground(self, box, label_ok: Callable[[np.ndarray], np.ndarray], n: int = 6) -> bool:
        t = _UNIT_STEPS[n] if n in _UNIT_STEPS else np.linspace(0.0, 1.0, n)
        x = (box[0] + (box[2] - box[0]) * t)[None, :]
        y = (box[1] + (box[3] - box[1]) * t)[:, None]
        return bool(label_ok(self.ground_label(x, y)).all())

    def free(self, box, margin=0.025, ignore=()) -> bool:
        return all(not overlaps(box, b, margin) for b, cat in self.blocked if cat not in ignore)

    # ---- objects ----
    def add(self, obj: SceneObject, footprint):
        self.objects.append(obj)
        self.blocked.append((tuple(footprint), obj.category))

    def road(self, vertical: bool, centre: float, width: float):
        half = width / 2
        if vertical:
            box = (centre - half, 0.0, centre + half, 1.0)
        else:
            box = (0.0, centre - half, 1.0, centre + half)
        self.add(SceneObject("road", Shape("rect", box), "grey", ROAD_RGB, "v" if vertical else "h"), box)

    def roads(self, n: int, lo=0.2, hi=0.8):
        first_vertical = bool(self.rng.integers(2))
        for k in range(n):
            vertical = first_vertical if k == 0 else not first_vertical
            self.road(vertical, self.rng.uniform(lo, hi), self.rng.uniform(0.15, 0.18))

    def building(self, size_range, colours, styles, on_land=True, tries=60, aspect=(0.75, 1.33)):
        rng = self.rng
        for _ in range(tries):
            s = rng.uniform(*size_range)
            a = rng.uniform(*aspect)
            w, h = s * math.sqrt(a), s / math.sqrt(a)
            w, h = min(w, size_range[1] * 1.15), min(h, size_range[1] * 1.15)
            w, h = max(w, size_range[0]), max(h, size_range[0])
            x0, y0 = rng.uniform(0.02, 0.98 - w), rng.uniform(0.02, 0.98 - h)
            d = 0.03 + 0.1 * s
            box = (x0, y0, x0 + w, y0 + h)
            foot = (x0, y0, x0 + w + d, y0 + h + d)
            if not self.free(foot):
                continue
            if on_land and not self._all_ground(box, lambda g: g != CLASS_ID["water"]):
                continue
            colour = colours[rng.integers(len(colours))]
            style = styles[rng.integers(len(styles))]
            self.add(SceneObject("building", Shape("rect", box), colour, BUILDING_COLOURS[colour],
                                 style, round(d, 4)), foot)
            return True
        return False

    def tree(self, r_range, allow_tree_overlap=False, on_land=True, tries=30):
        rng = self.rng
        for _ in range(tries):
            r = rng.uniform(*r_range)
            cx, cy = rng.uniform(-0.02, 1.02), rng.uniform(-0.02, 1.02)
            d = 0.3 * r
            foot = (cx - r, cy - r, cx + r + d, cy + r + d)
            if not self.free(foot, margin=0.01, ignore=("tree",) if allow_tree_overlap else ()):
                continue
            if on_land and not self._all_ground((cx - r, cy - r, cx + r, cy + r),
                                                lambda g: g != CLASS_ID["water"], n=3):
                continue
            rgb = tuple(int(v * rng.uniform(0.85, 1.15)) for v in TREE_RGB)
            self.add(SceneObject("tree", Shape("disc", (cx, cy, r)), "green", rgb, "", round(d, 4)), foot)
            return True
        return False

    def vehicle(self, length_range=(0.09, 0.11), width=0.055, tries=30):
        rng = self.rng
        roads = [o for o in self.objects if o.category == "road"]
        if not roads:
            return False
        for _ in range(tries):
            road = roads[rng.integers(len(roads))]
            x0, y0, x1, y1 = road.shape.params
            length = rng.uniform(*length_range)
            side = -1 if rng.integers(2) else 1
            if road.style == "h":
                c = (y0 + y1) / 2 + side * (y1 - y0) / 4
                px = rng.uniform(0.02, 0.98 - length)
                box = (px, c - width / 2, px + length, c + width / 2)
            else:
                c = (x0 + x1) / 2 + side * (x1 - x0) / 4
                py = rng.uniform(0.02, 0.98 - length)
                box = (c - width / 2, py, c + width / 2, py + length)
            if not self.free(box, margin=0.03, ignore=("road",)):
                continue
            names = list(VEHICLE_COLOURS)
            colour = names[rng.integers(len(names))]
            self.add(SceneObject("vehicle", Shape("rect", box), colour, VEHICLE_COLOURS[colour]), box)
            return True
        return False

    def ship(self, parallel_axis_vertical: bool, tries=80):
        rng = self.rng
        for _ in range(tries):
            length, width = rng.uniform(0.28, 0.4), rng.uniform(0.12, 0.16)
            vertical = parallel_axis_vertical if rng.uniform() < 0.5 else not parallel_axis_vertical
            w, h = (width, length) if vertical else (length, width)
            x0, y0 = rng.uniform(0.02, 0.98 - w), rng.uniform(0.02, 0.98 - h)
            box = (x0, y0, x0 + w, y0 + h)
            d = 0.02
            foot = (x0 - 0.01, y0 - 0.01, x0 + w + d + 0.01, y0 + h + d + 0.01)
            if not self.free(foot, margin=0.03):
                continue
            if not self._all_ground(foot, lambda g: g == CLASS_ID["water"]):
                continue
            bow = int(rng.integers(2)) + (2 if vertical else 0)
            names = list(SHIP_COLOURS)
            colour = names[rng.integers(len(names))]
            self.add(SceneObject("ship", Shape("ship", box + (bow,)), colour, SHIP_COLOURS[colour], "", d),
                     foot)
            return True
        return False


def _jitter(rng, rgb, amount=0.06):
    """The colour with a random brightness (+-amount) and a slight per-channel tint (+-2 %)."""
    k = rng.uniform(1 - amount, 1 + amount)
    return tuple(int(np.clip(v * k * rng.uniform(0.98, 1.02), 0, 255)) for v in rgb)


def _gen_residential(b: Builder):
    rng = b.rng
    b.region(Shape("fill"), "vegetation", _jitter(rng, LAWN_RGB))
    b.roads(1 if rng.uniform() < 0.6 else 2)
    for _ in range(int(rng.integers(4, 8))):
        b.building((0.15, 0.21), ("red", "blue", "white"), ("gable_h", "gable_v"))
    for _ in range(int(rng.integers(2, 7))):
        b.tree((0.04, 0.06))
    for _ in range(int(rng.integers(1, 4))):
        b.vehicle()


def _gen_industrial(b: Builder):
    rng = b.rng
    b.region(Shape("fill"), "bareland", _jitter(rng, CONCRETE_RGB))
    b.roads(1 if rng.uniform() < 0.7 else 2)
    for _ in range(int(rng.integers(2, 4))):
        b.building((0.26, 0.34), ("white", "white", "blue", "red"), ("flat",), aspect=(0.6, 1.66),
                   tries=150)
    for _ in range(int(rng.integers(2, 6))):
        b.vehicle(length_range=(0.11, 0.13), width=0.065)
    for _ in range(int(rng.integers(0, 3))):
        b.tree((0.035, 0.05))


def _gen_harbor(b: Builder):
    rng = b.rng
    side = int(rng.integers(4))
    water_frac = rng.uniform(0.42, 0.55)
    level = 1 - water_frac if side in (0, 2) else water_frac
    land = (LAWN_RGB, "vegetation") if rng.uniform() < 0.4 else (CONCRETE_RGB, "bareland")
    b.region(Shape("fill"), land[1], _jitter(rng, land[0]))
    amp = rng.uniform(0.01, 0.035)
    b.region(Shape("shore", (side, level, amp, rng.uniform(0.8, 2.0), rng.uniform(0, 6.28))),
             "water", _jitter(rng, WATER_RGB, 0.05), "water")
    ship_axis_vertical = side in (0, 1)       # ships moor perpendicular to a horizontal shore
    if rng.uniform() < 0.6:                   # a concrete pier into the water
        t = rng.uniform(0.25, 0.75)
        w, depth = rng.uniform(0.07, 0.09), rng.uniform(0.2, 0.3)
        shore_at = {0: level - amp, 1: level + amp, 2: level - amp, 3: level + amp}[side]
        if side == 0:
            box = (t - w / 2, shore_at - 0.02, t + w / 2, shore_at + depth)
        elif side == 1:
            box = (t - w / 2, shore_at - depth, t + w / 2, shore_at + 0.02)
        elif side == 2:
            box = (shore_at - 0.02, t - w / 2, shore_at + depth, t + w / 2)
        else:
            box = (shore_at - depth, t - w / 2, shore_at + 0.02, t + w / 2)
        b.region(Shape("rect", box), "bareland", _jitter(rng, CONCRETE_RGB))
        b.blocked.append((box, "pier"))
    land_depth = (level - amp) if side in (0, 2) else (1 - level - amp)
    if rng.uniform() < 0.6 and land_depth > 0.3:
        centre = land_depth / 2 if side in (0, 2) else 1 - land_depth / 2
        b.road(vertical=side in (2, 3), centre=centre, width=rng.uniform(0.15, 0.17))
    for _ in range(int(rng.integers(1, 5))):
        b.ship(ship_axis_vertical)
    for _ in range(int(rng.integers(0, 3))):
        b.building((0.15, 0.2), ("red", "blue", "white"), ("flat", "gable_h", "gable_v"))
    for _ in range(int(rng.integers(0, 3))):
        b.vehicle()


def _gen_forest(b: Builder):
    rng = b.rng
    b.region(Shape("fill"), "vegetation", _jitter(rng, FOREST_FLOOR_RGB))
    if rng.uniform() < 0.5:
        b.roads(1)
    for _ in range(int(rng.integers(1, 3))):
        if b.building((0.15, 0.2), ("red", "blue", "white"), ("gable_h", "gable_v", "flat")):
            x0, y0, x1, y1 = b.objects[-1].shape.params
            m = 0.04
            b.region(Shape("rect", (x0 - m, y0 - m, x1 + m + 0.03, y1 + m + 0.03)), "vegetation",
                     _jitter(rng, LAWN_RGB))
    for _ in range(260):
        b.tree((0.05, 0.085), allow_tree_overlap=True, on_land=False, tries=1)   # no water here


def _gen_farmland(b: Builder):
    rng = b.rng
    ncols, nrows = int(rng.integers(2, 5)), int(rng.integers(2, 4))
    xs = np.sort(np.concatenate([[0.0, 1.0], rng.uniform(0.2, 0.8, ncols - 1)]))
    ys = np.sort(np.concatenate([[0.0, 1.0], rng.uniform(0.2, 0.8, nrows - 1)]))
    b.region(Shape("fill"), "vegetation", _jitter(rng, CROP_RGBS[0]))
    for i in range(ncols):
        for j in range(nrows):
            box = (xs[i], ys[j], xs[i + 1], ys[j + 1])
            stripes = (int(rng.integers(2)), rng.uniform(0.06, 0.09))
            if rng.uniform() < 0.25:
                b.region(Shape("rect", box), "bareland", _jitter(rng, SOIL_RGB), "stripes", stripes)
            else:
                crop = CROP_RGBS[rng.integers(len(CROP_RGBS))]
                b.region(Shape("rect", box), "vegetation", _jitter(rng, crop), "stripes", stripes)
    if rng.uniform() < 0.35:
        vertical = bool(rng.integers(2))
        b.region(Shape("river", (int(vertical), rng.uniform(0.25, 0.75), rng.uniform(0.05, 0.07),
                                 rng.uniform(0.04, 0.09), rng.uniform(0.5, 1.3), rng.uniform(0, 6.28))),
                 "water", _jitter(rng, WATER_RGB, 0.05), "water")
    if rng.uniform() < 0.4:
        b.roads(1)
    for _ in range(int(rng.integers(1, 3))):
        b.building((0.15, 0.19), ("red", "blue", "white"), ("gable_h", "gable_v"))
    for _ in range(int(rng.integers(0, 5))):
        b.tree((0.035, 0.055))


def _gen_desert(b: Builder):
    rng = b.rng
    b.region(Shape("fill"), "bareland", _jitter(rng, SAND_RGB), "dunes", (rng.uniform(0.12, 0.2),))
    for _ in range(int(rng.integers(0, 4))):
        b.region(Shape("disc", (rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.12))),
                 "bareland", _jitter(rng, ROCK_RGB))
    if rng.uniform() < 0.5:
        b.roads(1)
    for _ in range(int(rng.integers(1, 3))):
        b.building((0.15, 0.2), ("red", "blue", "white"), ("flat", "gable_h", "gable_v"))
    for _ in range(int(rng.integers(0, 3))):
        b.vehicle()


_GENERATORS = {"forest": _gen_forest, "farmland": _gen_farmland, "residential": _gen_residential,
               "harbor": _gen_harbor, "desert": _gen_desert, "industrial": _gen_industrial}


def generate_scene(rng: np.random.Generator, image_size: int, scene_class: str | None = None,
                   max_tries: int = 50) -> Scene:
    """A random scene of `scene_class` (uniform over `SCENE_CLASSES` when None).

    Layouts are resampled until the class derived from the rendered label map matches and the
    scene has at least one unambiguous grounding target.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    if scene_class is None:
        scene_class = SCENE_CLASSES[int(rng.integers(len(SCENE_CLASSES)))]
    if scene_class not in _GENERATORS:
        raise ValueError(f"unknown scene class {scene_class!r}; expected one of {SCENE_CLASSES}")
    for _ in range(max_tries):
        b = Builder(rng)
        _GENERATORS[scene_class](b)
        scene = Scene(int(image_size), scene_class, tuple(b.regions), tuple(b.objects),
                      int(rng.integers(2 ** 31 - 1)))
        label, inst, counts, mean_area = scene_stats(scene)
        if derive_scene_class(label, counts, mean_area) != scene_class:
            continue
        if not vg_candidates(inst, image_size):
            continue
        return scene
    raise RuntimeError(f"could not generate a valid {scene_class!r} scene in {max_tries} tries "
                       f"at image_size={image_size}")


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of scene `index` of `split` (independent streams per split and index)."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode("utf-8")), int(index)])


def scene_for(seed: int, split: str, index: int, image_size: int) -> Scene:
    """The scene `write_dataset` writes as number `index` (classes cycle through SCENE_CLASSES)."""
    return generate_scene(scene_rng(seed, split, index), image_size,
                          SCENE_CLASSES[index % len(SCENE_CLASSES)])

