"""The dataset's documentation figure (docs/synthetic_gallery.png): one record per task and one 64 px
scene per class."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from rsunivlm_jax.data.synthetic.layouts import generate_scene, scene_for, scene_rng
from rsunivlm_jax.data.synthetic.raster import render
from rsunivlm_jax.data.synthetic.sample import make_sample
from rsunivlm_jax.data.synthetic.scene import ALL_TASKS, SCENE_CLASSES


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
