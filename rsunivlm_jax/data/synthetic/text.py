"""Text templates from the scene graph: captions and VQA questions (presence, count, comparison)."""
from __future__ import annotations

import numpy as np

from rsunivlm_jax.data.synthetic.raster import scene_stats
from rsunivlm_jax.data.synthetic.scene import (CLASS_ID, CLASS_NAMES, COUNTABLE, NUMBER_WORDS, PLURAL,
                                               PRESENCE_CATEGORIES, PRESENCE_RATE, Scene)


def _count_phrase(n: int, noun: str) -> str:
    if n == 1:
        return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"
    return f"{NUMBER_WORDS[min(n, 10)]} {PLURAL.get(noun, noun + 's')}"


def _join(parts: list[str]) -> str:
    parts = [p for p in parts if p]
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


CAPTION_PREFIX = {"residential": "a residential area", "industrial": "an industrial area",
                   "harbor": "a harbor", "forest": "a dense forest", "farmland": "farmland",
                   "desert": "a desert"}


def captions(scene: Scene) -> tuple[str, str]:
    """(canonical, paraphrase) captions from the scene graph, e.g. "a harbor with two ships."."""
    label, inst, counts, _ = scene_stats(scene)
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
    prefix = CAPTION_PREFIX[c]
    canonical = f"{prefix} with {body}." if body else f"{prefix}."
    be = "is" if parts[0].startswith(("a ", "an ")) and len([p for p in parts if p]) == 1 else "are"
    paraphrase = f"there {be} {body} in {prefix}." if body else f"this is {prefix}."
    return canonical, paraphrase


def vqa_question(scene: Scene, rng) -> tuple[str, str, str]:
    """(question, answer, question_type): presence, count or comparison.

    Presence questions are balanced per category: a category drawn uniformly is kept with
    probability min(r, 1 - r) / (r if present else 1 - r), r = its presence rate, which makes
    P(yes | category) = 1/2, so the answer cannot be guessed from the question text. When it is not
    kept, a count or comparison question is asked instead (one try only: retrying would reweight
    categories per scene and break the balance). Comparison questions put the larger count first
    or second with equal probability (yes/no balanced).
    """
    label, inst, counts, _ = scene_stats(scene)
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

