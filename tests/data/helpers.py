"""Shared helpers for the data tests: the real Qwen2 tokenizer (cached) and tiny fixture writers."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_TOKEN_ID = 151646


@functools.lru_cache(maxsize=None)
def qwen_tokenizer():
    from rsunivlm_jax.data.tokenizer import load_default_tokenizer
    return load_default_tokenizer(IMAGE_TOKEN_ID)


def write_png(path, arr, mode=None) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr), mode=mode).save(path)
    return str(path)


def random_rgb(seed: int, h: int = 40, w: int = 40) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def write_jsonl(path, records) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def conv(question: str, answer: str, n_images: int = 1) -> list:
    prefix = " ".join(["<image>"] * n_images) + "\n" if n_images else ""
    return [{"from": "human", "value": prefix + question}, {"from": "gpt", "value": answer}]


def small_dataset(root, n: int = 16, size: int = 40) -> str:
    """A record directory with n records cycling through cap / vg / seg / ccd (granularities 0/1/2/0)."""
    from rsunivlm_jax import tasks
    root = Path(root)
    recs = []
    for i in range(n):
        write_png(root / "images" / f"{i}.png", random_rgb(i, size, size))
    for i in range(n):
        k = i % 4
        img = f"images/{i}.png"
        if k == 0:
            recs.append({"id": f"cap-{i}", "task": "cap", "image": img,
                         "conversations": conv("[CAP] Describe this image briefly.", f"A field number {i}.")})
        elif k == 1:
            box = [2, 3, min(size, 8 + i % 10), min(size, 20)]
            recs.append({"id": f"vg-{i}", "task": "vg", "image": img,
                         "conversations": conv("[VG] Where is the car?", tasks.format_boxes(box, size, size)),
                         "gt": {"boxes_px": [box], "width": size, "height": size}})
        elif k == 2:
            g = np.zeros((24, 24), bool)
            g[i % 24, 3:9] = True
            recs.append({"id": f"seg-{i}", "task": "seg", "image": img,
                         "conversations": conv("[SEG] water.", tasks.encode_mask(g, "water"))})
        else:
            recs.append({"id": f"ccd-{i}", "task": "ccd", "image": [img, f"images/{i - 1}.png"],
                         "conversations": conv("[CCD] Please briefly describe the changes in these two images.",
                                               f"{i} houses are built.", 2)})
    write_jsonl(root / "train.jsonl", recs)
    return str(root)
