"""Task formats (rsunivlm_jax.tasks): boxes, masks, tags; round trips and the tolerant decoder."""
import random
import string

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from rsunivlm_jax import tasks

# ------------------------------------------------------------------ tags and prompts


@pytest.mark.parametrize("task,fields,expert", [
    ("cap", {}, 0), ("vqa", {"question": "Is there a road?"}, 0),
    ("cls", {"classes": ["forest", "water"]}, 0), ("vg", {"expression": "the red car"}, 1),
    ("ref", {"box_px": [0, 0, 10, 10], "width": 100, "height": 100}, 1),
    ("seg", {"label": "water"}, 2), ("ccd", {}, 0), ("cd", {"label": "building"}, 2)])
def test_prompt_tag_task_and_router(task, fields, expert):
    msg = tasks.make_user_message(task, **fields)
    n = tasks.TASK_NUM_IMAGES[task]
    assert msg.startswith("<image>\n" if n == 1 else "<image> <image>\n")
    assert tasks.leading_tag(msg) == tasks.TASK_TAG[task]
    assert tasks.task_of_prompt(msg, n) == task
    assert tasks.granularity(msg) == expert


def test_task_facts_agree_with_prompts_and_consumers():
    """One source for the task list: granularity from the router on a real prompt, image counts from
    the prompt layout, and the synthetic generator and the scorer use the same list."""
    from rsunivlm_jax.data import synthetic
    from rsunivlm_jax.eval import scoring
    fields = {"vqa": {"question": "Is there a road?"}, "cls": {"classes": ["a", "b"]}, "vg": {"expression": "x"},
              "ref": {"box": "[1, 2, 3, 4]"}, "seg": {"label": "water"}, "cd": {"label": "road"}}
    assert set(tasks.TASKS) == set(tasks.TASK_TAG) == set(tasks.TASK_NUM_IMAGES) == set(tasks.TASK_GRANULARITY)
    for task in tasks.TASKS:
        msg = tasks.make_user_message(task, **fields.get(task, {}))
        assert tasks.TASK_GRANULARITY[task] == tasks.granularity(msg)
        assert msg.count(tasks.IMAGE_PLACEHOLDER) == tasks.TASK_NUM_IMAGES[task]
    assert [tasks.TASK_GRANULARITY[t] for t in ("cls", "vg", "seg", "cd", "ccd")] == [0, 1, 2, 2, 0]
    assert set(tasks.MASK_TASKS) == {t for t in tasks.TASKS if tasks.TASK_TAG[t] == "[SEG]"}
    assert synthetic.ALL_TASKS == scoring.TASKS == tasks.TASKS
    assert scoring.MASK_TASKS is tasks.MASK_TASKS and scoring.CAPTION_TASKS is tasks.CAPTION_TASKS


def test_prompt_texts_match_reference_examples():
    assert tasks.make_prompt("cap") == "[CAP] Describe this image briefly."
    assert tasks.make_prompt("ccd") == "[CCD] Please briefly describe the changes in these two images."
    assert tasks.make_prompt("cd", label="building") == \
        "[SEG] Please segment the building area that have changed in the second image."
    assert tasks.make_prompt("cls", classes=["airport", "beach"]) == \
        "[CLS] Classify the given image in one of the following classes: airport, beach."
    assert tasks.leading_tag("[REF] what is [1, 2, 3, 4]?") == "[REF]"
    assert tasks.leading_tag("what is [1, 2, 3, 4]?") is None
    assert tasks.task_of_prompt("[FOO] x") is None


# ------------------------------------------------------------------ boxes


def test_box_worked_example_spec_4_6():
    px = tasks.boxes_to_pixels(tasks.parse_boxes("[53, 12, 100, 36]"), 512, 512)[0]
    assert px == pytest.approx((271.36, 61.44, 512.0, 184.32))
    assert tasks.format_boxes(px, 512, 512) == "[53, 12, 100, 36]"


def test_format_boxes_rounds_clips_and_joins():
    assert tasks.format_boxes([[-5, 10.5, 205, 99.4], [0, 0, 50, 50]], 200, 100) == \
        "[0, 11, 100, 99] [0, 0, 25, 50]"
    assert tasks.format_boxes([1, 1, 3, 3], 200, 200) == "[1, 1, 2, 2]"  # 0.5 and 1.5 round half up
    with pytest.raises(ValueError):
        tasks.format_boxes([1, 2, 3], 10, 10)
    with pytest.raises(ValueError):
        tasks.format_boxes([1, 2, 3, 4], 0, 10)


def test_parse_boxes_demo_semantics():
    text = "Found [25, 3, 74, 56] [10,50,68,98]. Also [1, 2] and [1.6, 2, 3, 4, 5, 6] and [a, b, c, d] [1, 2, 300, 4]"
    assert tasks.parse_boxes(text) == [(25, 3, 74, 56), (10, 50, 68, 98), (2, 2, 3, 4), (1, 2, 100, 4)]
    assert tasks.parse_boxes("no boxes") == []
    assert tasks.parse_boxes(None) == []
    assert tasks.parse_boxes("[1..2, 3, 4, 5]") == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(*[st.integers(0, 100)] * 4), min_size=1, max_size=5))
def test_boxes_text_round_trip(boxes):
    w, h = 512, 384
    px = tasks.boxes_to_pixels(boxes, w, h)
    text = tasks.format_boxes(px, w, h)
    assert tasks.parse_boxes(text) == [tuple(b) for b in boxes]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2000), st.integers(1, 2000), st.lists(st.floats(0, 1), min_size=4, max_size=4))
def test_pixel_round_trip_error_is_within_half_a_unit(w, h, rel):
    box = [rel[0] * w, rel[1] * h, rel[2] * w, rel[3] * h]
    back = tasks.boxes_to_pixels(tasks.parse_boxes(tasks.format_boxes(box, w, h)), w, h)[0]
    for v, b, s in zip(box, back, (w, h, w, h)):
        assert abs(v - b) <= 0.005 * s + 1e-9


def test_ref_question_round_trip():
    q = tasks.format_ref_question([40, 60, 120, 160], 400, 200)
    assert q == "[REF] what is [10, 30, 30, 80]?"
    assert tasks.parse_ref_box(q) == (10, 30, 30, 80)
    assert tasks.parse_ref_box("[REF] what is this?") is None


# ------------------------------------------------------------------ masks


def test_mask_text_matches_spec_example():
    g = np.zeros((24, 24), bool)
    g[10, 21] = True
    rows = tasks.encode_mask(g, "water").split("\n")
    assert len(rows) == 24
    assert rows[0] == "others*24" and rows[10] == "others*21, water*1, others*2"
    # Figure 1 style "\n " row separator and capitalisation decode to the same grid
    mask, problems = tasks.decode_mask("\n ".join(rows).replace("water", "Water"))
    assert problems == [] and np.array_equal(mask, g)


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(bool, st.tuples(st.integers(1, 32), st.integers(1, 32))),
       st.sampled_from(["water", "building", "low vegetation", "car"]))
def test_mask_round_trip_is_exact_on_the_grid(grid, label):
    g = np.zeros((max(grid.shape),) * 2, bool)
    g[:grid.shape[0], :grid.shape[1]] = grid
    text = tasks.encode_mask(g, label)
    mask, problems = tasks.decode_mask(text, g.shape[0])
    assert problems == []
    assert np.array_equal(mask, g)
    assert np.array_equal(tasks.decode_mask_strict(text, g.shape[0]), g)
    for row, line in zip(g, text.split("\n")):
        assert sum(int(r.rsplit("*", 1)[1]) for r in line.split(", ")) == len(row)


def test_encode_mask_rejects_bad_labels():
    for bad in ["others", "a*b", "a,b", "", "x\ny"]:
        with pytest.raises(ValueError):
            tasks.encode_mask(np.zeros((2, 2), bool), bad)


def test_label_grid_and_full_resolution_round_trip():
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 5, (24, 24)).astype(np.uint8)
    full = tasks.grid_to_mask(grid, 240, 480)       # exact multiples: every cell is a 10x20 block
    assert full.shape == (240, 480) and full.dtype == np.uint8
    assert np.array_equal(full, np.kron(grid, np.ones((10, 20), np.uint8)))
    assert np.array_equal(tasks.mask_to_grid(full, 24), grid)
    boolean = grid == 3
    assert np.array_equal(tasks.mask_to_grid(tasks.grid_to_mask(boolean, 100, 77), 24), boolean)
    big = tasks.mask_to_grid(np.arange(48 * 48, dtype=np.int64).reshape(48, 48), 24)
    assert big.dtype == np.int64  # labels preserved (nearest picks an existing value)
    assert set(big.ravel()) <= set(range(48 * 48))


def test_decoder_repairs_and_reports():
    ok = "\n".join(["others*24"] * 24)
    cases = {
        "ragged row": ok.replace("others*24", "others*20, water*2", 1),
        "long row": ok.replace("others*24", "others*20, water*10", 1),
        "few rows": "\n".join(["water*24"] * 20),
        "many rows": "\n".join(["others*24"] * 30),
        "lead-in": "The mask is: " + ok,
        "garbage run": ok.replace("others*24", "others*12, ???, others*12", 1),
        "bad count": ok.replace("others*24", "others*x", 1),
        "empty": "",
    }
    for name, text in cases.items():
        mask, problems = tasks.decode_mask(text)
        assert mask.shape == (24, 24) and mask.dtype == bool, name
        with pytest.raises(ValueError, match="malformed mask text"):
            tasks.decode_mask_strict(text)
        if name != "lead-in":
            assert problems, name
    assert tasks.decode_mask(cases["ragged row"])[0][0, 20:22].all()
    assert not tasks.decode_mask(cases["ragged row"])[0][0, 22:].any()
    assert tasks.decode_mask(cases["few rows"])[0][:20].all()
    assert not tasks.decode_mask(cases["few rows"])[0][20:].any()
    # unknown labels are foreground (demo rule: anything but "others")
    mask, problems = tasks.decode_mask("\n".join(["cat*12, dog*12"] * 24))
    assert mask.all() and problems == []
    assert tasks.mask_labels("others*3, cat*1\ndog*4") == ["cat", "dog"]


def _mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    alphabet = string.printable + "*,\n 0123456789\u00e9\u4e16\U0001F600\x00"
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(5)
        pos = rng.randrange(len(chars) + 1)
        if op == 0 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif op == 1:
            chars.insert(pos, rng.choice(alphabet))
        elif op == 2 and chars:
            chars[min(pos, len(chars) - 1)] = rng.choice(alphabet)
        elif op == 3:
            chars.insert(pos, str(rng.choice([0, -1, 10 ** 12, 99999999999999999999])))
        else:
            chars = chars[:pos] + chars[pos:][::-1]
    return "".join(chars)


def test_tolerant_decoder_never_raises_on_10000_strings():
    rng = random.Random(1234)
    nrng = np.random.default_rng(1234)
    valid = [tasks.encode_mask(nrng.random((24, 24)) < p, "water") for p in (0.0, 0.1, 0.5, 0.9)]
    alphabet = "others*water, \n0123456789:x"
    n_problem = 0
    for i in range(10_000):
        kind = i % 3
        if kind == 0:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        elif kind == 1:
            text = _mutate(rng, rng.choice(valid))
        else:
            text = "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 60)))
        mask, problems = tasks.decode_mask(text)
        assert mask.shape == (24, 24) and mask.dtype == bool
        assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
        n_problem += bool(problems)
    assert n_problem > 9000
    for bad in (None, 123, b"others*24", ["x"]):
        mask, problems = tasks.decode_mask(bad)
        assert not mask.any() and problems


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.integers(1, 40))
def test_tolerant_decoder_never_raises_hypothesis(text, g):
    mask, problems = tasks.decode_mask(text, g)
    assert mask.shape == (g, g)


# ------------------------------------------------------------------ change detection


def test_change_mask_added_and_removed_objects():
    before = np.zeros((6, 6), np.uint8)
    after = before.copy()
    before[0, 0] = 3           # building removed
    after[5, 5] = 3            # building added
    after[2, 2] = 4            # another class appears: not a building change
    before[3, 3] = after[3, 3] = 3  # unchanged building
    m = tasks.change_mask(before, after, 3)
    expected = np.zeros((6, 6), bool)
    expected[0, 0] = expected[5, 5] = True
    assert np.array_equal(m, expected)
    with pytest.raises(ValueError):
        tasks.change_mask(before, after[:5], 3)
