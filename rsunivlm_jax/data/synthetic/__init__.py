"""Built-in synthetic remote-sensing dataset: procedural top-down scenes with exact ground truth.

The embedded data set of the demo and the tests (nothing is downloaded). A scene is a small scene
graph in normalised coordinates that is rasterised at any image size; docs/synthetic.md shows
examples. Modules:

* `scene`    vocabulary (classes, scene classes, colours) and the scene-graph dataclasses;
* `raster`   scene -> RGB image, label map, instance map; visible instances and their pixel boxes;
             the scene class re-derived from the label map (`derive_scene_class`);
* `layouts`  one layout generator per scene class; `generate_scene`, `scene_for`;
* `change`   before/after pairs (buildings or a road added or removed) with change captions;
* `text`     captions and VQA questions from the scene graph;
* `sample`   one record per task for a scene (`make_sample`; prompts and answers from
             `rsunivlm_jax.tasks`; record schema in docs/data.md);
* `writer`   `write_dataset`: PNGs + `<split>.jsonl`, optionally in worker processes, optionally
             packed as TFDS;
* `gallery`  the documentation figure (`render_gallery`).

Design goal: a tiny model (64x64 images, 8x8 patches) learns the tasks in minutes on a CPU, so
objects are large and high-contrast (grounding targets >= 15 % of the image side, roads and
buildings wider than one cell of an 8x8 mask grid), answers are short and yes/no answers balanced.

Pixel boxes are ``[x1, y1, x2, y2]`` with exclusive right/bottom edges: an object covering pixel
columns 3..7 has ``x1 = 3, x2 = 8``. Label maps hold indices into `CLASS_NAMES`. Everything is
deterministic: a scene depends only on (seed, split, index, image size), and the files written for
the same arguments are byte-identical.
"""
from rsunivlm_jax.data.synthetic.change import make_change
from rsunivlm_jax.data.synthetic.gallery import render_gallery
from rsunivlm_jax.data.synthetic.layouts import generate_scene, scene_for, scene_rng
from rsunivlm_jax.data.synthetic.raster import derive_scene_class, position_of_box, render, render_instances
from rsunivlm_jax.data.synthetic.sample import make_records, make_sample
from rsunivlm_jax.data.synthetic.scene import (
    ALL_TASKS, BUILDING_COLOURS, CHANGE_CLASSES, CLASS_ID, CLASS_NAMES, COUNTABLE, GROUNDABLE, MIN_IMAGE_SIZE,
    NUMBER_WORDS, PLURAL, POSITIONS, PRESENCE_CATEGORIES, PRESENCE_RATE, REF_CATEGORIES, SCENE_CLASSES, SHIP_COLOURS,
    VEHICLE_COLOURS, Change, Region, Sample, Scene, SceneObject, Shape)
from rsunivlm_jax.data.synthetic.text import captions
from rsunivlm_jax.data.synthetic.writer import iter_samples, write_dataset

__all__ = [
    "ALL_TASKS", "BUILDING_COLOURS", "CHANGE_CLASSES", "CLASS_ID", "CLASS_NAMES", "COUNTABLE", "GROUNDABLE",
    "MIN_IMAGE_SIZE", "NUMBER_WORDS", "PLURAL", "POSITIONS", "PRESENCE_CATEGORIES", "PRESENCE_RATE", "REF_CATEGORIES",
    "SCENE_CLASSES", "SHIP_COLOURS", "VEHICLE_COLOURS", "Change", "Region", "Sample", "Scene", "SceneObject", "Shape",
    "captions", "derive_scene_class", "generate_scene", "iter_samples", "make_change", "make_records", "make_sample",
    "position_of_box", "render", "render_gallery", "render_instances", "scene_for", "scene_rng", "write_dataset",
]
