"""Rasteriser: a `Scene` -> RGB image, label map and instance map (cached), plus the measurements
taken on them (visible instances with pixel boxes, 3x3 positions, the scene class re-derived from
the label map)."""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Iterable, Sequence

import numpy as np

from rsunivlm_jax.data.synthetic.scene import (CLASS_ID, CLASS_NAMES, COUNTABLE, GROUNDABLE, LANE_RGB, POSITIONS,
                                               ROAD_RGB, SHADOW_FACTOR, Region, Scene, SceneObject, Shape)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinear value noise in [-1, 1] on a `cells` x `cells` lattice, sampled at pixel centres."""
    lattice = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1))
    u = (np.arange(size) + 0.5) / size * cells
    i = np.minimum(u.astype(int), cells - 1)
    f = u - i
    rows = lattice[i] * (1 - f)[:, None] + lattice[i + 1] * f[:, None]          # (S, cells+1)
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _window(shape: Shape, size: int):
    """Pixel window (row slice, col slice) covering the shape, and the pixel-centre coords in it."""
    x0, y0, x1, y1 = shape.bounds()
    c0 = max(0, int(math.floor(x0 * size)) - 1)
    c1 = min(size, int(math.ceil(x1 * size)) + 1)
    r0 = max(0, int(math.floor(y0 * size)) - 1)
    r1 = min(size, int(math.ceil(y1 * size)) + 1)
    if c1 <= c0 or r1 <= r0:
        return None
    xs = ((np.arange(c0, c1) + 0.5) / size)[None, :]
    ys = ((np.arange(r0, r1) + 0.5) / size)[:, None]
    return (slice(r0, r1), slice(c0, c1)), xs, ys


def _texture(region: Region, xs, ys, low):
    if region.texture == "stripes":
        vertical, period = region.tex
        t = xs if vertical else ys
        return 1.0 + 0.11 * np.sin(2 * math.pi * t / period)
    if region.texture == "dunes":
        (period,) = region.tex
        return 1.0 + 0.09 * np.sin(2 * math.pi * ((xs * 0.8 + ys * 0.6) / period + 0.6 * low))
    if region.texture == "water":
        return 1.0 + 0.04 * np.sin(2 * math.pi * (xs * 9 + ys * 5)) * low
    return 1.0


def _object_shading(obj: SceneObject, xs, ys, size: int) -> np.ndarray | float:
    """Brightness factor inside an object (roof halves, tree crowns, ship decks)."""
    p = obj.shape.params
    if obj.category == "building":
        x0, y0, x1, y1 = p
        if obj.style == "gable_h":
            return np.where(ys < (y0 + y1) / 2, 1.12, 0.84) + 0 * xs
        if obj.style == "gable_v":
            return np.where(xs < (x0 + x1) / 2, 1.12, 0.84) + 0 * ys
        rim = max(0.02, 1.0 / size)
        edge = (xs < x0 + rim) | (xs >= x1 - rim) | (ys < y0 + rim) | (ys >= y1 - rim)
        return np.where(edge, 0.82, 1.0)
    if obj.category == "tree":
        cx, cy, r = p
        return 1.0 - 0.22 * np.clip(((xs - cx) + (ys - cy)) / (1.414 * r), -1, 1)
    if obj.category == "ship":
        x0, y0, x1, y1, bow = p
        w, h = x1 - x0, y1 - y0
        if bow in (0, 1):
            deck = (np.abs(xs - (x0 + x1) / 2) < w * 0.18) & (np.abs(ys - (y0 + y1) / 2) < h * 0.25)
        else:
            deck = (np.abs(ys - (y0 + y1) / 2) < h * 0.18) & (np.abs(xs - (x0 + x1) / 2) < w * 0.25)
        return np.where(deck, 0.72, 1.0)
    if obj.category == "vehicle":
        x0, y0, x1, y1 = p
        if x1 - x0 >= y1 - y0:
            glass = np.abs(xs - (x0 + (x1 - x0) * 0.7)) < (x1 - x0) * 0.1
        else:
            glass = np.abs(ys - (y0 + (y1 - y0) * 0.7)) < (y1 - y0) * 0.1
        return np.where(glass, 0.45, 1.0) + 0 * ys
    return 1.0


_LAYER = {"road": 0, "building": 1, "tree": 2, "vehicle": 3, "ship": 3}


@functools.lru_cache(maxsize=16)
def rasterise(scene: Scene):
    """(rgb uint8 (S, S, 3), label uint8 (S, S), instance int32 (S, S), -1 = none). Cached: copy."""
    size = scene.image_size
    rng = np.random.default_rng(scene.seed)
    low = _smooth_noise(rng, size, 5)
    mid = _smooth_noise(rng, size, 13)
    fine = rng.normal(0.0, 1.0, (size, size, 3))
    shade = 1.0 + 0.07 * low + 0.04 * mid
    rgb = np.zeros((size, size, 3), np.float64)
    label = np.zeros((size, size), np.uint8)
    inst = np.full((size, size), -1, np.int32)

    for region in scene.regions:
        win = _window(region.shape, size)
        if win is None:
            continue
        sl, xs, ys = win
        m = region.shape.contains(xs, ys)
        f = shade[sl] * _texture(region, xs, ys, low[sl])
        colour = np.asarray(region.rgb, np.float64)[None, None, :] * np.broadcast_to(f, m.shape)[..., None]
        rgb[sl][m] = colour[m]
        label[sl][m] = CLASS_ID[region.label]

    order = sorted(range(len(scene.objects)), key=lambda i: _LAYER[scene.objects[i].category])
    roads = [i for i in order if scene.objects[i].category == "road"]
    others = [i for i in order if scene.objects[i].category != "road"]

    for i in roads:
        obj = scene.objects[i]
        sl, xs, ys = _window(obj.shape, size)
        m = obj.shape.contains(xs, ys)
        x0, y0, x1, y1 = obj.shape.params
        along, across, centre = (xs, ys, (y0 + y1) / 2) if obj.style == "h" else (ys, xs, (x0 + x1) / 2)
        half_line = max(0.008, 0.5 / size)
        lane = (np.abs(across - centre) < half_line) & ((along % 0.12) < 0.06)
        f = np.broadcast_to(shade[sl], m.shape)
        colour = np.where(np.broadcast_to(lane, m.shape)[..., None], np.asarray(LANE_RGB, float),
                          np.asarray(ROAD_RGB, float)) * f[..., None]
        rgb[sl][m] = colour[m]
        label[sl][m] = CLASS_ID["road"]
        inst[sl][m] = i

    shadow = np.zeros((size, size), bool)
    for i in others:
        obj = scene.objects[i]
        if obj.height <= 0:
            continue
        cast = obj.shape.shifted(obj.height, obj.height)
        win = _window(cast, size)
        if win is not None:
            sl, xs, ys = win
            shadow[sl] |= cast.contains(xs, ys)
    rgb[shadow] *= SHADOW_FACTOR

    for i in others:
        obj = scene.objects[i]
        win = _window(obj.shape, size)
        if win is None:
            continue
        sl, xs, ys = win
        m = obj.shape.contains(xs, ys)
        f = np.broadcast_to(_object_shading(obj, xs, ys, size) * (1.0 + 0.03 * mid[sl]), m.shape)
        colour = np.asarray(obj.rgb, np.float64)[None, None, :] * f[..., None]
        rgb[sl][m] = colour[m]
        label[sl][m] = CLASS_ID[obj.category]
        inst[sl][m] = i

    rgb = np.clip(rgb + 2.5 * fine, 0, 255).round().astype(np.uint8)
    for a in (rgb, label, inst):
        a.setflags(write=False)           # shared through the cache
    return rgb, label, inst


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Scene -> (rgb uint8 (S, S, 3), label map int (S, S) of indices into `CLASS_NAMES`)."""
    rgb, label, _ = rasterise(scene)
    return rgb.copy(), label.astype(np.int64)


def render_instances(scene: Scene) -> np.ndarray:
    """Instance map int (S, S): index into `scene.objects` of the visible object, -1 for ground."""
    return rasterise(scene)[2].copy()


@dataclasses.dataclass(frozen=True)
class Instance:
    index: int
    category: str
    colour: str
    box: tuple          # pixel box, exclusive right/bottom
    pixels: int


def visible_instances(scene: Scene, categories: Iterable[str] = COUNTABLE) -> list[Instance]:
    """Visible objects of the given categories with their tight pixel boxes."""
    _, _, inst = rasterise(scene)
    size = scene.image_size
    out = []
    for i, obj in enumerate(scene.objects):
        if obj.category not in categories:
            continue
        win = _window(obj.shape, size)
        if win is None:
            continue
        sl = win[0]
        ys, xs = np.nonzero(inst[sl] == i)
        if len(xs) == 0:
            continue
        box = (int(xs.min() + sl[1].start), int(ys.min() + sl[0].start),
               int(xs.max() + sl[1].start + 1), int(ys.max() + sl[0].start + 1))
        out.append(Instance(i, obj.category, obj.colour, box, int(len(xs))))
    return out


def position_of_box(box: Sequence[float], width: float, height: float) -> str:
    """Position phrase of a box centre on a 3x3 grid ("top left" ... "bottom right")."""
    cx = (box[0] + box[2]) / 2 / width
    cy = (box[1] + box[3]) / 2 / height
    col = min(2, max(0, int(cx * 3)))
    row = min(2, max(0, int(cy * 3)))
    return POSITIONS[row][col]


# --------------------------------------------------------------------------------------------
# Scene class from the layout
# --------------------------------------------------------------------------------------------

def derive_scene_class(label: np.ndarray, counts: dict, building_area: float) -> str | None:
    """Scene class from a label map, instance counts and the mean building area (image fraction).

    Rules in order: harbor (water >= 25 % and a ship), forest (trees >= 30 %), industrial (>= 2
    buildings of mean area >= 6 %), residential (>= 4 buildings), desert (bare land >= 50 %),
    farmland (vegetation >= 40 %); None if no rule applies.
    """
    frac = np.bincount(label.ravel(), minlength=len(CLASS_NAMES)) / label.size
    if frac[CLASS_ID["water"]] >= 0.25 and counts.get("ship", 0) >= 1:
        return "harbor"
    if frac[CLASS_ID["tree"]] >= 0.30:
        return "forest"
    if counts.get("building", 0) >= 2 and building_area >= 0.06:
        return "industrial"
    if counts.get("building", 0) >= 4:
        return "residential"
    if frac[CLASS_ID["bareland"]] >= 0.50:
        return "desert"
    if frac[CLASS_ID["vegetation"]] >= 0.40:
        return "farmland"
    return None


def scene_stats(scene: Scene):
    _, label, _ = rasterise(scene)
    inst = visible_instances(scene, COUNTABLE)
    counts = {c: sum(1 for o in inst if o.category == c) for c in COUNTABLE}
    areas = [o.pixels for o in inst if o.category == "building"]
    mean_area = float(np.mean(areas)) / label.size if areas else 0.0
    return label, inst, counts, mean_area


def vg_candidates(instances: list[Instance], size: int) -> list[Instance]:
    """Groundable instances whose (colour, category, position) is unique in the scene."""
    keys = [(o.colour, o.category, position_of_box(o.box, size, size)) for o in instances]
    return [o for o, k in zip(instances, keys)
            if o.category in GROUNDABLE and keys.count(k) == 1]

