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


def test_answer_picture_draws_answer_truth_and_region_one_way():
    from rsunivlm_jax import tasks
    img = Image.new("RGB", (64, 32), BLACK)  # enlarged 6x to a 192-pixel short side
    vg = np.asarray(render.answer_picture("vg", [img], "[0, 0, 50, 100]", truth={"boxes_px": [[32, 0, 64, 32]]}))
    assert vg.shape == (192, 384, 3)
    assert tuple(vg[100, 0]) == tuple(vg[100, 1]) == tasks.PRED_COLOR  # 2-pixel lines
    assert tuple(vg[100, 383]) == tasks.TRUTH_COLOR and tuple(vg[100, 100]) == BLACK
    ref = np.asarray(render.answer_picture("ref", [img], "a ship", prompt="[REF] what is [50, 0, 100, 100]?"))
    assert tuple(ref[100, 383]) == tasks.REGION_COLOR and tuple(ref[100, 0]) == BLACK
    seg = np.asarray(render.answer_picture("seg", [img], "water*1, others*1\nothers*2", grid_size=2,
                                           truth={"mask": np.array([[0, 1]], bool)}))
    assert seg.shape == (192, 384 + 4 + 384, 3)  # answer | truth
    assert (seg[:96, :192, 0] > 0).all() and (seg[96:, :384] == 0).all()
    assert (seg[:, 388 + 192:, 1] > 0).all() and (seg[:, 388:388 + 192] == 0).all()
    cd = render.answer_picture("cd", [img, img], "others*2\nothers*2", grid_size=2, truth={"mask": np.ones((2, 2))})
    assert cd.size == (4 * 384 + 3 * 4, 192)  # before | after | answer map | true map
    assert render.answer_picture("ccd", [img, img], "new roads").size == (384 + 4 + 384, 192)
    assert render.answer_picture("cap", [Image.new("RGB", (400, 300))], "a field").size == (400, 300)


def test_record_picture_captions_question_answer_and_truth(tmp_path):
    Image.new("RGB", (32, 32), (0, 0, 255)).save(tmp_path / "x.png")
    record = {"id": "r1", "task": "vg", "images": [str(tmp_path / "x.png")],
              "conversations": [{"from": "human", "value": "<image>\n[VG] the pond"},
                                {"from": "gpt", "value": "[0, 0, 50, 50]"}],
              "gt": {"boxes_px": [[0, 0, 16, 16]], "width": 32, "height": 32}}
    with_truth = render.record_picture(record, "[50, 50, 100, 100]", tmp_path)
    without = render.record_picture(record, "[50, 50, 100, 100]", tmp_path, truth=False)
    assert with_truth.size[0] == without.size[0] == 400  # captions need at least 400 pixels
    assert with_truth.size[1] > without.size[1] > 192  # one caption line more: the truth
    top = np.asarray(with_truth)[:192, 104:296]  # the 192x192 picture, centred
    assert tuple(top[10, 0]) == (0, 200, 0) and tuple(top[100, 96]) == (255, 0, 0)  # truth green, answer red
    assert tuple(top[150, 150]) == (0, 0, 255)
