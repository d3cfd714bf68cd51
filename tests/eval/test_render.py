"""Pictures: boxes, mask overlays, change maps, galleries and curves written as PNG of the right size."""
import numpy as np
import pytest
from PIL import Image

from rsunivlm_jax.eval import render

RED = (255, 0, 0)
BLACK = (0, 0, 0)


def _png(path):
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.convert("RGB")


def test_draw_boxes_0_100_on_non_square_image(tmp_path):
    # 200x100 image, box [10, 20, 50, 60] on 0-100 -> pixels x 20..100, y 20..60 (x by W, y by H).
    img = Image.new("RGB", (200, 100), BLACK)
    out = render.draw_boxes(img, [[10, 20, 50, 60]], width=1)
    path = render.save_png(out, tmp_path / "sub" / "box.png")
    got = _png(path)
    assert got.size == (200, 100)
    for xy in [(20, 20), (60, 20), (99, 40), (20, 40), (60, 59)]:  # corners / edges
        assert got.getpixel(xy) == RED, xy
    for xy in [(60, 40), (10, 10), (100, 40), (60, 60), (60, 80)]:  # inside / outside
        assert got.getpixel(xy) == BLACK, xy
    assert img.getpixel((20, 20)) == BLACK  # the input is not modified
    same = render.draw_boxes(img, [[20, 20, 100, 60]], units="pixels", width=1)
    assert np.array_equal(np.asarray(same), np.asarray(out))
    parsed = render.draw_answer_boxes(img, "The ship is at [10, 20, 50, 60].", width=1)
    assert np.array_equal(np.asarray(parsed), np.asarray(out))


def test_overlay_mask_grid_on_image(tmp_path):
    img = Image.new("RGB", (60, 40), (100, 100, 100))
    grid = np.array([[1, 0], [0, 0]], dtype=bool)  # top-left quadrant = 30x20 pixels
    out = render.overlay_mask(img, grid, alpha=0.25)
    got = np.asarray(_png(render.save_png(out, tmp_path / "mask.png")))
    assert got.shape == (40, 60, 3)
    # 0.75 * 100 + 0.25 * 255 = 138.75 -> 139 in red; 0.75 * 100 = 75 in green / blue.
    assert (got[:20, :30] == [139, 75, 75]).all()
    rest = np.ones((40, 60), bool)
    rest[:20, :30] = False
    assert (got[rest] == [100, 100, 100]).all()


def test_overlay_answer_mask_decodes_rle():
    img = Image.new("RGB", (4, 4), BLACK)
    out = np.asarray(render.overlay_answer_mask(img, "water*1, others*1\nothers*2", grid_size=2, alpha=1.0))
    assert (out[:2, :2] == RED).all() and (out[2:, :] == BLACK).all() and (out[:, 2:] == BLACK).all()


def test_change_map_panel(tmp_path):
    before = Image.new("RGB", (30, 20), (255, 0, 0))
    after = Image.new("RGB", (30, 20), (0, 0, 255))
    change = np.array([[0, 1], [0, 0]], dtype=bool)  # changed: top-right 15x10 block
    got = np.asarray(_png(render.save_png(render.change_map_panel(before, after, change), tmp_path / "cd.png")))
    assert got.shape == (20, 90, 3)
    assert (got[:, :30] == [255, 0, 0]).all()
    assert (got[:, 30:60] == [0, 0, 255]).all()
    cmap = got[:, 60:]
    assert (cmap[:10, 15:] == 255).all()
    assert (cmap[10:] == 0).all() and (cmap[:, :15] == 0).all()
    # a differently sized "before" is resized to the "after" size
    small = render.change_map_panel(Image.new("RGB", (10, 5)), after, change, gap=2)
    assert small.size == (94, 20)


def test_compose_gallery(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    panels = [(f"panel {k}", Image.new("RGB", (30, 20), c)) for k, c in enumerate(colours)]
    out = render.compose_gallery(panels, columns=2, title_height=18, padding=4)
    got = _png(render.save_png(out, tmp_path / "gallery.png"))
    # 2 columns x 2 rows: width 2 * (30 + 4) + 4, height 2 * (18 + 20 + 4) + 4.
    assert got.size == (72, 88)
    # panel k's image starts at x = 4 + col * 34, y = 4 + row * 42 + 18
    assert got.getpixel((4, 22)) == colours[0]
    assert got.getpixel((38 + 29, 22 + 19)) == colours[1]
    assert got.getpixel((4 + 15, 46 + 22 + 10)) == colours[2]
    assert got.getpixel((38 + 15, 46 + 22 + 10)) == (255, 255, 255)  # empty fourth cell
    # a title was drawn (some dark pixels in the first title strip)
    strip = np.asarray(got)[4:22, 4:34]
    assert (strip.sum(axis=-1) < 300).any()
    with pytest.raises(ValueError):
        render.compose_gallery([])


def test_plot_curves(tmp_path):
    series = {"train": [(0, 2.0), (10, 1.5), (20, 1.1)], "eval": [(20, 1.3), (0, 2.1)]}
    path = render.plot_curves(series, tmp_path / "curves" / "loss.png", title="loss", size_px=(640, 400))
    got = _png(path)
    assert got.size == (640, 400)
    arr = np.asarray(got)
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 3  # not a blank canvas


def test_draw_boxes_accepts_degenerate_boxes():
    from PIL import Image

    from rsunivlm_jax.eval import render
    img = Image.new("RGB", (50, 40))
    out = render.draw_boxes(img, [(10, 10, 10, 30), (20, 20, 40, 20)], units="pixels")
    assert out.size == (50, 40)
    assert out.getpixel((10, 20)) != (0, 0, 0)
