"""Built-in synthetic remote-sensing dataset: procedural top-down scenes with exact ground truth.

The embedded default data set of the demo and the tests (no download). Each scene is a small scene
graph in normalised image coordinates (x right, y down, both in [0, 1]) that is rasterised at any
image size:

* land cover (ground regions): vegetation, bare land (soil, sand, concrete), water (shore, river);
* objects: roads (straight bands with lane marks), buildings with shadows, trees, vehicles on
  roads and ships on water;
* one of six scene classes (`SCENE_CLASSES`) whose layout rules make it visually distinct; the
  class is re-derived from the rendered label map (`derive_scene_class`) and a layout is kept only
  when the two agree.

From a scene, `make_sample` writes one instruction record per task (all eight RSUniVLM tasks, SPEC
section 4; record schema in docs/CONTRIBUTING_AGENTS.md): templated captions and VQA from the scene
graph, classification over `SCENE_CLASSES`, referring expressions "the <colour> <category> at the
<position>" with tight pixel boxes, region descriptions "1 <category> at the <position>.", class
masks and, from a before/after pair (`make_change`: buildings or a road added or removed), a change
caption and a change mask. Prompts and answer text come from `rsunivlm_jax.tasks`.

Design goal: a tiny model (64x64 images, 8x8 patches) must learn the tasks in minutes on a CPU, so
objects are large and high-contrast (grounding targets >= 15 % of the image side, roads and
buildings wider than one cell of an 8x8 mask grid), answers are short and yes/no answers balanced.

Pixel boxes are ``[x1, y1, x2, y2]`` with exclusive right/bottom edges: an object covering pixel
columns 3..7 has ``x1 = 3, x2 = 8`` (pixel i spans [i, i + 1)). Label maps hold indices into
`CLASS_NAMES`; every pixel has exactly one class.

Everything is deterministic: a scene depends only on (seed, split, index, image size), and the
files written for the same arguments are byte-identical.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import zlib
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from rsunivlm_jax import tasks as T

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

CLASS_NAMES = ("vegetation", "bareland", "water", "road", "building", "tree", "vehicle", "ship")
CLASS_ID = {name: i for i, name in enumerate(CLASS_NAMES)}
SCENE_CLASSES = ("forest", "farmland", "residential", "harbor", "desert", "industrial")
ALL_TASKS = ("cap", "vqa", "cls", "vg", "ref", "seg", "ccd", "cd")
PRESENCE_CATEGORIES = ("building", "road", "water", "tree", "vehicle", "ship")
COUNTABLE = ("building", "ship", "vehicle")      # instances never touch, so counts are exact
GROUNDABLE = ("building", "ship")                # large enough for [VG] targets
REF_CATEGORIES = ("building", "ship", "vehicle")
# Fraction of scenes (classes balanced) in which each category is visible; measured on 600 scenes
# at 64 px. Used to balance yes/no per presence category.
PRESENCE_RATE = {"building": 0.88, "road": 0.69, "tree": 0.58, "vehicle": 0.46, "water": 0.23,
                 "ship": 0.17}
CHANGE_CLASSES = ("building", "road")
MIN_IMAGE_SIZE = 32                              # below this, objects get too few pixels
POSITIONS = (("top left", "top", "top right"),
             ("left", "center", "right"),
             ("bottom left", "bottom", "bottom right"))
PLURAL = {"building": "buildings", "ship": "ships", "vehicle": "vehicles", "tree": "trees",
          "road": "roads"}
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

BUILDING_COLOURS = {"red": (186, 62, 48), "blue": (62, 96, 178), "white": (232, 230, 222)}
SHIP_COLOURS = {"white": (240, 240, 236), "red": (200, 48, 40), "yellow": (232, 196, 48)}
VEHICLE_COLOURS = {"white": (238, 238, 238), "red": (200, 40, 36), "blue": (40, 70, 190),
                   "black": (28, 28, 32)}
TREE_RGB = (34, 86, 36)
ROAD_RGB = (112, 112, 112)
LANE_RGB = (214, 214, 200)
WATER_RGB = (34, 74, 126)
LAWN_RGB = (102, 148, 68)
FOREST_FLOOR_RGB = (70, 108, 50)
CROP_RGBS = ((96, 150, 56), (142, 172, 70), (74, 128, 52), (168, 176, 84))
SOIL_RGB = (150, 112, 78)
SAND_RGB = (216, 192, 142)
ROCK_RGB = (176, 146, 108)
CONCRETE_RGB = (168, 162, 152)
SHADOW_FACTOR = 0.5


# --------------------------------------------------------------------------------------------
# Scene graph
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Shape:
    """A filled shape in normalised coordinates.

    kinds and params:
      fill  ()                                   the whole image
      rect  (x0, y0, x1, y1)
      disc  (cx, cy, r)
      shore (side, level, amp, freq, phase)      water side: 0 bottom, 1 top, 2 right, 3 left;
                                                 boundary ``level + amp * sin(2 pi freq t + phase)``
      river (vertical, centre, half, amp, freq, phase)   a sinusoidal band
      ship  (x0, y0, x1, y1, bow)                a hull with a pointed bow: 0 right, 1 left,
                                                 2 down, 3 up
    """
    kind: str
    params: tuple = ()

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Bool array: are the points (x, y) (broadcastable arrays) inside the shape?"""
        k, p = self.kind, self.params
        if k == "fill":
            return np.ones(np.broadcast_shapes(np.shape(x), np.shape(y)), dtype=bool)
        if k == "rect":
            return (x >= p[0]) & (x < p[2]) & (y >= p[1]) & (y < p[3])
        if k == "disc":
            return (x - p[0]) ** 2 + (y - p[1]) ** 2 < p[2] ** 2
        if k == "shore":
            side, level, amp, freq, phase = p
            t, u = (x, y) if side in (0, 1) else (y, x)
            edge = level + amp * np.sin(2 * math.pi * freq * t + phase)
            return u > edge if side in (0, 2) else u < edge
        if k == "river":
            vertical, centre, half, amp, freq, phase = p
            t, u = (y, x) if vertical else (x, y)
            return np.abs(u - (centre + amp * np.sin(2 * math.pi * freq * t + phase))) < half
        if k == "ship":
            x0, y0, x1, y1, bow = p
            inside = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
            if bow in (0, 1):
                length, half, perp = x1 - x0, (y1 - y0) / 2, np.abs(y - (y0 + y1) / 2)
                tip = (x1 - x) if bow == 0 else (x - x0)
            else:
                length, half, perp = y1 - y0, (x1 - x0) / 2, np.abs(x - (x0 + x1) / 2)
                tip = (y1 - y) if bow == 2 else (y - y0)
            taper = min(2 * half * 1.2, length / 2)
            return inside & (perp <= half * np.clip(tip / taper, 0.0, 1.0) + 1e-9)
        raise ValueError(f"unknown shape kind {k!r}")

    def bounds(self) -> tuple[float, float, float, float]:
        """Normalised (x0, y0, x1, y1) that contains the shape (may exceed [0, 1])."""
        k, p = self.kind, self.params
        if k in ("rect", "ship"):
            return tuple(p[:4])
        if k == "disc":
            return (p[0] - p[2], p[1] - p[2], p[0] + p[2], p[1] + p[2])
        if k == "shore":
            side, level, amp = p[0], p[1], abs(p[2])
            return {0: (0, level - amp, 1, 1), 1: (0, 0, 1, level + amp),
                    2: (level - amp, 0, 1, 1), 3: (0, 0, level + amp, 1)}[side]
        if k == "river":
            vertical, centre, half, amp = p[0], p[1], p[2], abs(p[3])
            lo, hi = centre - half - amp, centre + half + amp
            return (lo, 0, hi, 1) if vertical else (0, lo, 1, hi)
        return (0.0, 0.0, 1.0, 1.0)

    def shifted(self, dx: float, dy: float) -> "Shape":
        """The same shape moved by (dx, dy) (rect, disc and ship only)."""
        p = self.params
        if self.kind == "rect":
            return Shape("rect", (p[0] + dx, p[1] + dy, p[2] + dx, p[3] + dy))
        if self.kind == "ship":
            return Shape("ship", (p[0] + dx, p[1] + dy, p[2] + dx, p[3] + dy, p[4]))
        if self.kind == "disc":
            return Shape("disc", (p[0] + dx, p[1] + dy, p[2]))
        raise ValueError(f"cannot shift a {self.kind!r} shape")


@dataclasses.dataclass(frozen=True)
class Region:
    """Land cover painted in list order (later regions cover earlier ones)."""
    shape: Shape
    label: str                      # one of CLASS_NAMES (vegetation, bareland or water)
    rgb: tuple
    texture: str = "plain"          # plain | stripes | dunes | water
    tex: tuple = ()                 # stripes: (vertical, period); dunes: (period,)


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """A road, building, tree, vehicle or ship. `height` is the shadow offset (0 = no shadow)."""
    category: str
    shape: Shape
    colour: str = ""
    rgb: tuple = (0, 0, 0)
    style: str = ""                 # building: gable_h | gable_v | flat; road: h | v
    height: float = 0.0


@dataclasses.dataclass(frozen=True)
class Scene:
    """One synthetic scene: land cover + objects; `seed` fixes the texture noise."""
    image_size: int
    scene_class: str
    regions: tuple
    objects: tuple
    seed: int


@dataclasses.dataclass(frozen=True)
class Change:
    """A before/after pair: `after` differs from the source scene by buildings or a road."""
    after: Scene
    label: str                      # changed class: building | road
    kind: str                       # build_buildings | remove_buildings | build_road | remove_road
    references: tuple               # change captions, canonical first


@dataclasses.dataclass
class Sample:
    """Everything one scene contributes: records plus the arrays to write under the root."""
    records: list
    images: dict                    # relative path -> uint8 (H, W, 3)
    masks: dict                     # relative path -> bool (H, W)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

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
def _rasterise(scene: Scene):
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
    rgb, label, _ = _rasterise(scene)
    return rgb.copy(), label.astype(np.int64)


def render_instances(scene: Scene) -> np.ndarray:
    """Instance map int (S, S): index into `scene.objects` of the visible object, -1 for ground."""
    return _rasterise(scene)[2].copy()


@dataclasses.dataclass(frozen=True)
class _Instance:
    index: int
    category: str
    colour: str
    box: tuple          # pixel box, exclusive right/bottom
    pixels: int


def _instances(scene: Scene, categories: Iterable[str] = COUNTABLE) -> list[_Instance]:
    """Visible objects of the given categories with their tight pixel boxes."""
    _, _, inst = _rasterise(scene)
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
        out.append(_Instance(i, obj.category, obj.colour, box, int(len(xs))))
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


def _scene_stats(scene: Scene):
    _, label, _ = _rasterise(scene)
    inst = _instances(scene, COUNTABLE)
    counts = {c: sum(1 for o in inst if o.category == c) for c in COUNTABLE}
    areas = [o.pixels for o in inst if o.category == "building"]
    mean_area = float(np.mean(areas)) / label.size if areas else 0.0
    return label, inst, counts, mean_area


def _vg_candidates(instances: list[_Instance], size: int) -> list[_Instance]:
    """Groundable instances whose (colour, category, position) is unique in the scene."""
    keys = [(o.colour, o.category, position_of_box(o.box, size, size)) for o in instances]
    return [o for o, k in zip(instances, keys)
            if o.category in GROUNDABLE and keys.count(k) == 1]


# --------------------------------------------------------------------------------------------
# Layout generation
# --------------------------------------------------------------------------------------------

def _overlaps(a, b, margin: float = 0.0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or
                a[3] + margin <= b[1] or b[3] + margin <= a[1])


_UNIT_STEPS = {n: np.linspace(0.0, 1.0, n) for n in (3, 6, 12)}


class _Builder:
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
        return all(not _overlaps(box, b, margin) for b, cat in self.blocked if cat not in ignore)

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


def _gen_residential(b: _Builder):
    rng = b.rng
    b.region(Shape("fill"), "vegetation", _jitter(rng, LAWN_RGB))
    b.roads(1 if rng.uniform() < 0.6 else 2)
    for _ in range(int(rng.integers(4, 8))):
        b.building((0.15, 0.21), ("red", "blue", "white"), ("gable_h", "gable_v"))
    for _ in range(int(rng.integers(2, 7))):
        b.tree((0.04, 0.06))
    for _ in range(int(rng.integers(1, 4))):
        b.vehicle()


def _gen_industrial(b: _Builder):
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


def _gen_harbor(b: _Builder):
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


def _gen_forest(b: _Builder):
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


def _gen_farmland(b: _Builder):
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


def _gen_desert(b: _Builder):
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
        b = _Builder(rng)
        _GENERATORS[scene_class](b)
        scene = Scene(int(image_size), scene_class, tuple(b.regions), tuple(b.objects),
                      int(rng.integers(2 ** 31 - 1)))
        label, inst, counts, mean_area = _scene_stats(scene)
        if derive_scene_class(label, counts, mean_area) != scene_class:
            continue
        if not _vg_candidates(inst, image_size):
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


# --------------------------------------------------------------------------------------------
# Before / after pairs
# --------------------------------------------------------------------------------------------

def _footprint(obj: SceneObject):
    x0, y0, x1, y1 = obj.shape.bounds()
    return (x0, y0, x1 + obj.height, y1 + obj.height)


def _change_builder(scene: Scene, rng) -> _Builder:
    b = _Builder(rng)
    b.regions = list(scene.regions)
    b.objects = list(scene.objects)
    b.blocked = [(_footprint(o), o.category) for o in scene.objects]
    return b


def _drop_trees_under(b: _Builder, box):
    keep = [o for o in b.objects if not (o.category == "tree" and _overlaps(_footprint(o), box, 0.01))]
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
        if any((r.style == "v") == vertical and _overlaps(r.shape.params, box, 0.08) for r in existing):
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
    _, label_a, _ = _rasterise(scene)
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
            _, label_b, _ = _rasterise(after)
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


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------

def _count_phrase(n: int, noun: str) -> str:
    if n == 1:
        return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"
    return f"{NUMBER_WORDS[min(n, 10)]} {PLURAL.get(noun, noun + 's')}"


def _join(parts: list[str]) -> str:
    parts = [p for p in parts if p]
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


_CAPTION_PREFIX = {"residential": "a residential area", "industrial": "an industrial area",
                   "harbor": "a harbor", "forest": "a dense forest", "farmland": "farmland",
                   "desert": "a desert"}


def captions(scene: Scene) -> tuple[str, str]:
    """(canonical, paraphrase) captions from the scene graph, e.g. "a harbor with two ships."."""
    label, inst, counts, _ = _scene_stats(scene)
    present = set(np.unique(label).tolist())
    nb, ns = counts["building"], counts["ship"]
    n_roads = sum(1 for o in scene.objects if o.category == "road")
    roads = _count_phrase(n_roads, "road") if n_roads else ""
    buildings = _count_phrase(nb, "building") if nb else ""
    c = scene.scene_class
    if c == "residential":
        parts = [buildings, "trees" if CLASS_ID["tree"] in present else "", roads]
    elif c == "industrial":
        parts = [_count_phrase(nb, "large building"), roads]
    elif c == "harbor":
        parts = [_count_phrase(ns, "ship") + " on the water", buildings]
    elif c == "farmland":
        parts = ["green fields", buildings, "a river" if CLASS_ID["water"] in present else "", roads]
    else:                                           # forest, desert
        parts = [buildings, roads]
    body = _join(parts)
    prefix = _CAPTION_PREFIX[c]
    canonical = f"{prefix} with {body}." if body else f"{prefix}."
    be = "is" if parts[0].startswith(("a ", "an ")) and len([p for p in parts if p]) == 1 else "are"
    paraphrase = f"there {be} {body} in {prefix}." if body else f"this is {prefix}."
    return canonical, paraphrase


def _vqa(scene: Scene, rng) -> tuple[str, str, str]:
    """(question, answer, question_type): presence, count or comparison.

    Presence questions are balanced per category: a category drawn uniformly is kept with
    probability min(r, 1 - r) / (r if present else 1 - r), r = its presence rate, which makes
    P(yes | category) = 1/2, so the answer cannot be guessed from the question text. When it is not
    kept, a count or comparison question is asked instead (one try only: retrying would reweight
    categories per scene and break the balance). Comparison questions put the larger count first
    or second with equal probability (yes/no balanced).
    """
    label, inst, counts, _ = _scene_stats(scene)
    present = {CLASS_NAMES[i] for i in np.unique(label).tolist()}
    if rng.uniform() < 0.6:
        cat = PRESENCE_CATEGORIES[rng.integers(len(PRESENCE_CATEGORIES))]
        rate, here = PRESENCE_RATE[cat], cat in present
        if rng.uniform() < min(rate, 1 - rate) / (rate if here else 1 - rate):
            article = "" if cat == "water" else ("an " if cat[0] in "aeiou" else "a ")
            return f"Is there {article}{cat}?", "yes" if here else "no", "presence"
    pairs = [(a, b) for a in COUNTABLE for b in COUNTABLE if a < b and counts[a] != counts[b]]
    if pairs and rng.uniform() < 0.5:
        a, b = pairs[rng.integers(len(pairs))]
        yes = bool(rng.integers(2))
        more, less = (a, b) if counts[a] > counts[b] else (b, a)
        first, second = (more, less) if yes else (less, more)
        return (f"Are there more {PLURAL[first]} than {PLURAL[second]}?", "yes" if yes else "no",
                "comparison")
    cands = [c for c in COUNTABLE if counts[c] > 0] if rng.uniform() < 0.85 else list(COUNTABLE)
    cat = cands[rng.integers(len(cands))]
    return f"How many {PLURAL[cat]} are there?", str(counts[cat]), "count"


def _record(rid, task, image, question, answer, gt):
    return {"id": rid, "task": task, "image": image,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
            "gt": gt}


def _check_split(split: str):
    if not isinstance(split, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", split):
        raise ValueError(f"split must match [A-Za-z0-9_-]+, got {split!r}")


def _check_tasks(tasks):
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
    _check_split(split)
    tasks = _check_tasks(tasks)
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
    inst = _instances(scene, COUNTABLE)

    for task in tasks:
        rng = rng_for(task)
        if task == "cap":
            refs = captions(scene)
            records.append(_record(rid(task), task, img, T.make_user_message("cap"), refs[0],
                                   {"references": list(refs)}))
        elif task == "vqa":
            q, a, qtype = _vqa(scene, rng)
            records.append(_record(rid(task), task, img, T.make_user_message("vqa", question=q), a,
                                   {"answer": a, "question_type": qtype}))
        elif task == "cls":
            records.append(_record(rid(task), task, img,
                                   T.make_user_message("cls", classes=list(SCENE_CLASSES)),
                                   scene.scene_class,
                                   {"label": scene.scene_class, "classes": list(SCENE_CLASSES)}))
        elif task == "vg":
            cands = _vg_candidates(inst, size)
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


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

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
    _check_split(split)
    tasks = _check_tasks(tasks)
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


# --------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------

def render_gallery(out_png: str, seed: int = 0, image_size: int = 256, grid_size: int = 24) -> str:
    """One sample per task (image with boxes / masks / change pair, prompt and answer) on the top
    rows and one 64x64 scene per class (what the tiny model sees) on the bottom row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    def wrap(text, width=40, lines=4):
        out = []
        for para in text.split("\n"):
            while para and len(out) < lines:
                out.append(para[:width])
                para = para[width:]
        return "\n".join(out) + ("..." if len(text) > width * lines else "")

    fig = plt.figure(figsize=(18, 13.5))
    grid = fig.add_gridspec(3, 12, height_ratios=(1.25, 1.25, 0.8))
    for k, task in enumerate(ALL_TASKS):
        ax = fig.add_subplot(grid[k // 4, 3 * (k % 4):3 * (k % 4) + 3])
        ax.axis("off")
        scene = scene_for(seed, "gallery", k, image_size)
        sample = make_sample(scene, k, "gallery", grid_size, (task,))
        rec = sample.records[0]
        q = rec["conversations"][0]["value"]
        a = rec["conversations"][1]["value"]
        if task in ("ccd", "cd"):
            before, after = (sample.images[p] for p in rec["image"])
            gap = np.full((image_size, 6, 3), 255, np.uint8)
            shown = np.concatenate([before, gap, after], axis=1)
            ax.imshow(shown)
            if task == "cd":
                m = sample.masks[rec["gt"]["mask"]]
                over = np.zeros(m.shape + (4,))
                over[m] = (1, 0, 0, 0.55)
                ax.imshow(over, extent=(image_size + 6 - 0.5, 2 * image_size + 6 - 0.5,
                                        image_size - 0.5, -0.5))
                ax.set_xlim(-0.5, 2 * image_size + 6 - 0.5)
            a_show = a if task == "ccd" else "change mask (red), RLE:\n" + a.split("\n")[0][:38] + " ..."
        else:
            ax.imshow(sample.images[rec["image"]])
            a_show = a
            if task in ("vg", "ref"):
                box = rec["gt"]["boxes_px"][0] if task == "vg" else rec["gt"]["box_px"]
                ax.add_patch(Rectangle((box[0] - 0.5, box[1] - 0.5), box[2] - box[0], box[3] - box[1],
                                       fill=False, edgecolor="yellow", linewidth=2))
            if task == "seg":
                m = sample.masks[rec["gt"]["mask"]]
                over = np.zeros(m.shape + (4,))
                over[m] = (1, 0, 1, 0.45)
                ax.imshow(over)
                a_show = f"{rec['gt']['label']} mask (magenta), RLE:\n" + a.split("\n")[0][:38] + " ..."
        ax.set_title(f"{task}  ({scene.scene_class})", fontsize=11)
        caption = "Q: " + wrap(q.replace("<image>", "").strip(), 52, 3) + "\nA: " + wrap(a_show, 52, 3)
        ax.text(0.0, -0.03, caption,
                transform=ax.transAxes, va="top", fontsize=9, family="monospace")
    for k, cls in enumerate(SCENE_CLASSES):
        ax = fig.add_subplot(grid[2, 2 * k:2 * k + 2])
        ax.axis("off")
        scene = generate_scene(scene_rng(seed, "gallery64", k), 64, cls)
        ax.imshow(render(scene)[0], interpolation="nearest")
        ax.set_title(f"{cls} (64x64)", fontsize=11)
    fig.suptitle("rsunivlm_jax synthetic remote-sensing dataset: one record per task "
                 f"({image_size}px) and one 64px scene per class", fontsize=13)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.94, bottom=0.02, hspace=0.45, wspace=0.3)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    import io
    buf = io.BytesIO()
    fig.savefig(buf, dpi=80, format="png")
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as im:            # 256-colour palette keeps the docs PNG small
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE,
                                     dither=Image.Dither.NONE).save(out_png, optimize=True)
    return out_png
