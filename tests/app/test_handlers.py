"""The page's checks and pictures without a server: parse problems, drawn answers, settings, image counts."""
import numpy as np
import pytest
from PIL import Image

from rsunivlm_jax import tasks
from rsunivlm_jax.app import handlers


def test_parse_problems_are_listed():
    assert handlers.problems("[VG] the car", "[10, 20, 30, 40]", "vg", 24) == []
    vg = handlers.problems("[VG] the car", "the car is at [10, 20, 30]", "vg", 24)
    assert any(p.startswith("boxes: ") for p in vg) and vg[-1].endswith("nothing drawn")
    assert handlers.problems("[REF] what is this?", "a car", "ref", 24) == [
        "question: no [x1, y1, x2, y2] box in the [REF] question; nothing drawn"]
    mask = tasks.encode_mask(np.eye(4, dtype=bool), "water")
    assert handlers.problems("[SEG] water.", mask, "seg", 4) == []
    short = handlers.problems("[SEG] water.", mask.rsplit("\n", 1)[0], "seg", 4)
    assert short == ["mask: 3 rows, expected 4"]
    cls = tasks.make_prompt("cls", classes=["forest", "desert"])
    assert handlers.problems(cls, "Forest.", "cls", 24) == []
    assert handlers.problems(cls, "ocean", "cls", 24) == ["class: 'ocean' is not one of the listed classes"]


def test_pictures():
    red = Image.new("RGB", (100, 50), (0, 0, 200))
    big = handlers.display_copy(Image.new("RGB", (4000, 1000)))
    assert big.size == (768, 192) and handlers.display_copy(red).size == (320, 160)
    drawn = np.asarray(handlers.picture([red], "[VG] x", "[0, 0, 50, 100]", "vg", 24))
    assert drawn.shape == (160, 320, 3) and (drawn != (0, 0, 200)).any(axis=-1)[:, :162].any()
    assert not (drawn != (0, 0, 200)).any(axis=-1)[:, 170:].any()  # nothing right of the box
    mask = tasks.encode_mask(np.array([[1, 0], [0, 0]], bool), "water")
    overlay = np.asarray(handlers.picture([red], "[SEG] water.", mask, "seg", 2))
    assert (overlay[:80, :160] != (0, 0, 200)).any(axis=-1).all() and (overlay[80:, 160:] == (0, 0, 200)).all()
    pair = handlers.picture([red, red], "[SEG] the change", mask, "cd", 2)
    assert pair.size == (3 * 320, 160)
    assert handlers.picture([red], "[CAP] x", "a caption", "cap", 24).size == (320, 160)


def test_request_checks():
    one, two = [Image.new("RGB", (8, 8))], [Image.new("RGB", (8, 8))] * 2
    assert handlers.check_request(two, "  free text on two images ") == "free text on two images"
    assert handlers.check_request(two, "[SEG] the change") == "[SEG] the change"
    for images, message, reason in ((one, "[CCD] x", "compares two images"), (two, "[REF] x", "takes one image"),
                                    ([], "[CAP] x", "no image"), (one, "", "empty"),
                                    (one, "x" * 3000, "the limit is 2000")):
        with pytest.raises(handlers.RequestError, match=reason):
            handlers.check_request(images, message)
    assert handlers.decoding(True, False, "0.5", 3.0, 1, 1.1, 0, 8, 7).top_k == 3
    for bad, reason in ((dict(grid_size=0), "mask grid"), (dict(temperature="hot"), "temperature must be a number"),
                        (dict(max_new_tokens=10**6), "max new tokens")):
        with pytest.raises(handlers.RequestError, match=reason):
            handlers.decoding(**bad)


class _CountingEngine:
    """Stands in for `Engine`: an answer of ten one-character tokens, then the final progress."""

    def answer(self, images, message, settings):
        from rsunivlm_jax.app.engine import Progress
        base = dict(task="cap", granularity=0, constrained=False, max_new_tokens=10)
        for n in range(1, 11):
            yield Progress("x" * n, n, **base)
        yield Progress("x" * 10, 11, done=True, finished=True, seconds=0.5, first_token_seconds=0.1, **base)


def test_partial_answers_are_rate_limited():
    image = Image.new("RGB", (8, 8))
    settings = handlers.decoding()
    every = list(handlers.respond(_CountingEngine(), image, None, "[CAP] x", settings))
    assert [u.answer for u in every] == [""] + ["x" * n for n in range(1, 11)] + ["x" * 10]
    assert every[-1].done and every[-1].picture.size == (320, 320) and "11 tokens · 0.50 s" in every[-1].info
    few = list(handlers.respond(_CountingEngine(), image, None, "[CAP] x", settings, min_interval=60.0))
    assert [u.answer for u in few] == ["", "x" * 10] and few[-1].done
