"""The page's examples: held-out synthetic scenes (`rsunivlm_jax.data.synthetic`) written at start-up.

With the main job's checkpoint (`runs/demo/gmoe`) they are the scenes of its held-out split, with
the same seed, image size and mask grid (read from the run's `demo_config.json`), so the examples
are questions that model was evaluated on. Counterpart: the nine `examples` of the reference demo.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

from PIL import Image

from rsunivlm_jax import tasks

# (scene index, task) of each example, in page order.
EXAMPLES = ((0, "vg"), (0, "seg"), (1, "ccd"), (1, "cd"), (0, "cap"), (0, "vqa"), (0, "cls"), (0, "ref"),
            (2, "vg"))
DEMO_CONFIG = "demo_config.json"


@dataclasses.dataclass(frozen=True)
class SyntheticSettings:
    seed: int = 0
    split: str = "test"
    image_size: int = 64
    grid_size: int = tasks.DEFAULT_GRID_SIZE


@dataclasses.dataclass(frozen=True)
class Example:
    image1: str
    image2: str | None
    task: str
    message: str  # without image placeholders


def settings_for(checkpoint: str | Path) -> SyntheticSettings:
    """The held-out split of the main job whose run directory holds `checkpoint` (its parent's
    `demo_config.json`), else the defaults (seed 0, split "test", 64 px, 24x24 grid)."""
    path = Path(checkpoint).resolve().parent / DEMO_CONFIG
    if not path.is_file():
        return SyntheticSettings()
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        d = cfg["data"]
        return SyntheticSettings(seed=int(cfg.get("seed", 0)), split=str(d.get("eval_split", "test")),
                                 image_size=int(d["image_size"]), grid_size=int(d["grid_size"]))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: cannot read the data settings ({e})") from None


def write_examples(out_dir: str | Path, settings: SyntheticSettings = SyntheticSettings()) -> list[Example]:
    """Renders the `EXAMPLES` scenes into `out_dir` (PNG) and returns the examples."""
    from rsunivlm_jax.data import synthetic
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = {}
    examples = []
    for index, task in EXAMPLES:
        if index not in samples:
            scene = synthetic.scene_for(settings.seed, settings.split, index, settings.image_size)
            samples[index] = synthetic.make_sample(scene, index, settings.split, settings.grid_size)
        sample = samples[index]
        record = next(r for r in sample.records if r["task"] == task)
        rels = record["image"] if isinstance(record["image"], list) else [record["image"]]
        paths = []
        for rel in rels:
            path = out / Path(rel).name
            if not path.exists():
                tmp = path.with_suffix(".tmp.png")
                Image.fromarray(sample.images[rel]).save(tmp, format="PNG")
                tmp.replace(path)
            paths.append(str(path))
        message = tasks.strip_placeholders(record["conversations"][0]["value"])
        examples.append(Example(paths[0], paths[1] if len(paths) > 1 else None, task, message))
    return examples


def requests(examples: Sequence[Example], decoding) -> list[tuple[list[Image.Image], str, object]]:
    """(images, message, decoding) of each example: what `Engine.warm_up` needs to compile the
    programs the examples use with the page's initial settings (`Engine.defaults`)."""
    return [([Image.open(p).convert("RGB") for p in (e.image1, e.image2) if p], e.message, decoding)
            for e in examples]
