"""Pictures of answers, records and training curves, as Pillow images written to PNG.

* `answer_picture` - the one drawing of a task's answer on its input (every command line, the
  report gallery and the app use it): boxes, the region a [REF] asks about, mask overlays, change
  maps, with the ground truth next to / over it when given; `record_picture` adds a record's truth
  and the question / answer text (`captioned`).
* `draw_boxes` / `draw_answer_boxes` - boxes (0-100 units or pixels) drawn on an image; the
  counterpart of `draw_box` in the reference demo (`app.py`: ``x_pix = x / 100 * W``).
* `overlay_mask` - a binary mask (any size, e.g. the 24x24 grid) nearest-resized to the image and
  blended in red; `mask_image` - the black / white map alone.
* `change_map_panel` - before | after | black / white change map(s) side by side (the demo shows
  the change map alone).
* `compose_gallery` - titled panels in a grid, one PNG.
* `plot_curves` - loss / metric curves to PNG with matplotlib's Agg canvas (no pyplot state).
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rsunivlm_jax import tasks

RED = tasks.PRED_COLOR
MIN_SIDE = 192  # answer pictures: a smaller input is enlarged (nearest) by a whole factor
PALETTE = ((255, 0, 0), (0, 200, 0), (0, 120, 255), (255, 200, 0), (255, 0, 255), (0, 220, 220))


def _rgb(image) -> Image.Image:
    """A Pillow RGB copy of `image` (PIL image or HxW / HxWx3 uint8 array)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {arr.dtype}")
    return Image.fromarray(arr).convert("RGB")


def save_png(image: Image.Image, path) -> Path:
    """Writes `image` as PNG (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow: bitmap font without a size
        return ImageFont.load_default()


# --------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------

def draw_boxes(image, boxes: Sequence[Sequence[float]], *, units: str = "0-100",
               colors: Sequence[tuple[int, int, int]] = PALETTE, width: int | None = None,
               labels: Sequence[str] | None = None) -> Image.Image:
    """A copy of `image` with each ``[x1, y1, x2, y2]`` box outlined.

    units: ``"0-100"`` (answer format, relative to this image's W, H) or ``"pixels"``.
    colors: cycled over the boxes (first box red). width: line width (default min(W, H) / 150, at
    least 2 pixels).
    labels: optional text drawn at each box's top-left corner.
    """
    if units not in ("0-100", "pixels"):
        raise ValueError(f"units must be '0-100' or 'pixels', got {units!r}")
    out = _rgb(image)
    w, h = out.size
    if len(boxes) == 0:
        return out
    px = tasks.boxes_to_pixels(boxes, w, h) if units == "0-100" else [tuple(map(float, b)) for b in boxes]
    line = width if width is not None else max(2, round(min(w, h) / 150))
    draw = ImageDraw.Draw(out)
    font = _font(max(10, min(w, h) // 25))
    for k, (x1, y1, x2, y2) in enumerate(px):
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        # Continuous box edges -> inclusive pixel indices, kept on the canvas.
        xy = [min(max(round(x1), 0), w - 1), min(max(round(y1), 0), h - 1),
              min(max(round(x2) - 1, 0), w - 1), min(max(round(y2) - 1, 0), h - 1)]
        xy[2], xy[3] = max(xy[2], xy[0]), max(xy[3], xy[1])  # degenerate (zero-size) boxes: one pixel
        color = tuple(colors[k % len(colors)])
        draw.rectangle(xy, outline=color, width=line)
        if labels is not None and k < len(labels) and labels[k]:
            draw.text((xy[0] + line + 1, xy[1] + line + 1), str(labels[k]), fill=color, font=font)
    return out


def draw_answer_boxes(image, answer: str, **kwargs) -> Image.Image:
    """Boxes parsed from an answer (``"[x1, y1, x2, y2] ..."`` on 0-100) drawn on `image`."""
    return draw_boxes(image, tasks.parse_boxes(answer), units="0-100", **kwargs)


# --------------------------------------------------------------------------------------------
# Masks and change maps
# --------------------------------------------------------------------------------------------

def _mask_at(mask, size: tuple[int, int]) -> np.ndarray:
    """Bool mask nearest-resized to PIL `size` = (W, H)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    mask = mask.astype(bool)
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    return tasks.grid_to_mask(mask, size[1], size[0])


def mask_image(mask, size: tuple[int, int] | None = None) -> Image.Image:
    """Black / white RGB picture of a bool mask (white = foreground), optionally resized (W, H)."""
    mask = np.asarray(mask).astype(bool)
    if size is not None:
        mask = _mask_at(mask, size)
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L").convert("RGB")


def overlay_mask(image, mask, *, color: tuple[int, int, int] = RED, alpha: float = 0.5) -> Image.Image:
    """`image` with the foreground of `mask` blended towards `color` (``(1 - a) * pixel + a * color``).

    The mask may have any size (a 24x24 grid or full resolution); it is nearest-resized to the image.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = _rgb(image)
    fg = _mask_at(mask, base.size)
    arr = np.asarray(base).astype(np.float32)
    arr[fg] = (1.0 - alpha) * arr[fg] + alpha * np.asarray(color, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="RGB")


def overlay_answer_mask(image, answer: str, grid_size: int = tasks.DEFAULT_GRID_SIZE, **kwargs) -> Image.Image:
    """Mask decoded (tolerantly) from a row-RLE answer, overlaid on `image`."""
    grid, _ = tasks.decode_mask(answer, grid_size)
    return overlay_mask(image, grid, **kwargs)


def change_map_panel(before, after, change_mask, *more_masks, gap: int = 0,
                     background: tuple[int, int, int] = (150, 150, 150)) -> Image.Image:
    """before | after | black-and-white change map (| further maps), side by side at the size of `after`.

    `before` is resized (bilinear) to the size of `after` when they differ; each mask (grid or full
    resolution) is nearest-resized. Width = (2 + number of masks) * W + gaps, height = H.
    """
    after_img = _rgb(after)
    w, h = after_img.size
    before_img = _rgb(before)
    if before_img.size != (w, h):
        before_img = before_img.resize((w, h), Image.BILINEAR)
    maps = [mask_image(m, (w, h)) for m in (change_mask, *more_masks)]
    return side_by_side([before_img, after_img, *maps], gap=gap, background=background)


def side_by_side(images: Sequence, *, gap: int = 4, background: tuple[int, int, int] = (255, 255, 255)):
    """Images in one row, top-aligned, `gap` pixels of `background` apart."""
    images = [_rgb(i) for i in images]
    out = Image.new("RGB", (sum(i.size[0] for i in images) + gap * (len(images) - 1),
                            max(i.size[1] for i in images)), background)
    x = 0
    for img in images:
        out.paste(img, (x, 0))
        x += img.size[0] + gap
    return out


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------

def enlarged(image, min_side: int = MIN_SIDE) -> Image.Image:
    """RGB `image` enlarged (nearest) by the smallest whole factor that makes its short side >= `min_side`."""
    img = _rgb(image)
    k = max(1, math.ceil(min_side / max(1, min(img.size))))
    return img if k == 1 else img.resize((img.size[0] * k, img.size[1] * k), Image.NEAREST)


def answer_picture(task: str | None, images: Sequence, answer: str, *, prompt: str = "",
                   truth: Mapping | None = None, grid_size: int = tasks.DEFAULT_GRID_SIZE,
                   min_side: int = MIN_SIDE) -> Image.Image:
    """A task's answer drawn on its input image(s), with the ground truth when `truth` gives it.

    [VG]: answer boxes in red, ``truth["boxes_px"]`` (pixels of the input) in green; [REF]: the
    region the question (`prompt`) asks about in yellow; [SEG]: the answer mask over the image in
    red | ``truth["mask"]`` in green; change detection (two images): before | after | answer map
    (| true map); other tasks: the image(s). Inputs under `min_side` pixels are enlarged (nearest).
    """
    shown = [enlarged(im, min_side) for im in images]
    truth = truth or {}
    if task == "vg":
        scale = shown[0].size[0] / _rgb(images[0]).size[0]
        pic = draw_boxes(shown[0], [[v * scale for v in b] for b in truth.get("boxes_px", [])], units="pixels",
                         colors=[tasks.TRUTH_COLOR])
        return draw_answer_boxes(pic, answer, colors=[tasks.PRED_COLOR])
    if task == "ref":
        box = tasks.parse_ref_box(prompt)
        return draw_boxes(shown[0], [box] if box else [], colors=[tasks.REGION_COLOR])
    if task in tasks.MASK_TASKS:
        grid, _ = tasks.decode_mask(answer, grid_size)
        masks = [grid] + ([truth["mask"]] if truth.get("mask") is not None else [])
        if task == "cd" and len(shown) == 2:
            return change_map_panel(shown[0], shown[1], *masks, gap=4 if len(masks) > 1 else 0)
        return side_by_side([overlay_mask(shown[-1], m, color=c)
                             for m, c in zip(masks, (tasks.PRED_COLOR, tasks.TRUTH_COLOR))])
    return side_by_side(shown)


def captioned(picture, lines: Sequence[str], *, min_width: int = 400, font_size: int = 12,
              max_lines: int = 3) -> Image.Image:
    """`picture` above text `lines` (each wrapped to the width, at most `max_lines` rows)."""
    pic = _rgb(picture)
    width = max(pic.size[0], min_width)
    chars = max(20, int(width / (0.6 * font_size)))
    rows = [row for line in lines
            for row in (textwrap.wrap(str(line).replace("\n", " / "), chars, max_lines=max_lines,
                                      placeholder=" ...") or [""])]
    step = font_size + 3
    out = Image.new("RGB", (width, pic.size[1] + 8 + step * len(rows)), (255, 255, 255))
    out.paste(pic, ((width - pic.size[0]) // 2, 0))
    draw = ImageDraw.Draw(out)
    font = _font(font_size)
    for k, row in enumerate(rows):
        draw.text((4, pic.size[1] + 4 + k * step), row, fill=(0, 0, 0), font=font)
    return out


def record_picture(record: Mapping, answer: str, root=None, *, images: Sequence | None = None,
                   truth: bool = True, grid_size: int = tasks.DEFAULT_GRID_SIZE,
                   title: str | None = None) -> Image.Image:
    """`answer_picture` of `answer` to a validated record, captioned with the question and answer.

    truth: also draw the record's ground truth (boxes; masks read under `root`) and caption its
    answer. images: the decoded inputs (default: read from the record's paths).
    """
    from rsunivlm_jax.data.preprocess import open_image
    turns = record.get("conversations") or []
    question = next((t["value"] for t in turns if t.get("from") == "human"), "")
    reference = next((t["value"] for t in reversed(turns) if t.get("from") == "gpt"), "")
    images = list(images) if images is not None else [open_image(p) for p in record["images"]]
    task = record.get("task") or tasks.task_of_prompt(question, len(images))
    gt: dict = {}
    if truth and task == "vg":
        gt["boxes_px"] = (record.get("gt") or {}).get("boxes_px", [])
    if truth and task in tasks.MASK_TASKS:
        from rsunivlm_jax.eval import scoring
        gt["mask"] = scoring.load_gt_mask(record, 0, root, task)
    picture = answer_picture(task, images, answer, prompt=question, truth=gt, grid_size=grid_size)
    lines = ([title] if title else []) + [f"Q: {tasks.strip_placeholders(question)}", f"answer: {answer}"]
    return captioned(picture, lines + ([f"truth: {reference}"] if truth else []))


# --------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------

def compose_gallery(panels: Sequence[tuple[str, Image.Image]], *, columns: int | None = None,
                    cell_size: tuple[int, int] | None = None, title_height: int = 18, padding: int = 4,
                    background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Titled panels in a grid: each cell is a title strip above the (fitted) image.

    panels: ``[(title, PIL image), ...]``. columns: default ``ceil(sqrt(n))``.
    cell_size: (W, H) of the image area of each cell; default the largest panel. Panels larger than
    the cell are shrunk keeping their aspect ratio; smaller ones are centred, not enlarged.
    Size: ``columns * (W + padding) + padding`` by ``rows * (title_height + H + padding) + padding``.
    """
    if not panels:
        raise ValueError("compose_gallery needs at least one panel")
    n = len(panels)
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    if cell_size is None:
        cell_size = (max(p.size[0] for _, p in panels), max(p.size[1] for _, p in panels))
    cw, ch = cell_size
    out = Image.new("RGB", (columns * (cw + padding) + padding, rows * (title_height + ch + padding) + padding),
                    background)
    draw = ImageDraw.Draw(out)
    font = _font(max(8, title_height - 6))
    for k, (title, panel) in enumerate(panels):
        r, c = divmod(k, columns)
        x0 = padding + c * (cw + padding)
        y0 = padding + r * (title_height + ch + padding)
        img = _rgb(panel)
        if img.size[0] > cw or img.size[1] > ch:
            scale = min(cw / img.size[0], ch / img.size[1])
            img = img.resize((max(1, int(img.size[0] * scale)), max(1, int(img.size[1] * scale))), Image.BILINEAR)
        draw.text((x0, y0 + 1), str(title), fill=(0, 0, 0), font=font)
        out.paste(img, (x0 + (cw - img.size[0]) // 2, y0 + title_height + (ch - img.size[1]) // 2))
    return out


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------

def plot_curves(series: Mapping[str, Sequence[tuple[float, float]]], path, *, title: str | None = None,
                xlabel: str = "step", ylabel: str = "loss", logy: bool = False,
                size_px: tuple[int, int] = (800, 500), dpi: int = 100) -> Path:
    """Line plot of ``{name: [(step, value), ...]}`` written to `path` as a PNG of `size_px` pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, points in series.items():
        points = sorted((float(s), float(v)) for s, v in points)
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=str(name), marker="." if len(points) < 50 else None)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if series:
        ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path
