"""Scene vocabulary and the scene graph of the synthetic dataset (normalised coordinates, x right,
y down, both in [0, 1]): land-cover regions, objects, before/after changes and written samples."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from rsunivlm_jax.tasks import TASKS as ALL_TASKS  # noqa: F401  (re-exported: every task has a generator)

CLASS_NAMES = ("vegetation", "bareland", "water", "road", "building", "tree", "vehicle", "ship")
CLASS_ID = {name: i for i, name in enumerate(CLASS_NAMES)}
SCENE_CLASSES = ("forest", "farmland", "residential", "harbor", "desert", "industrial")
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

