"""Metrics, caption metrics, scoring and reports against hand-computed values."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from rsunivlm_jax import tasks
from rsunivlm_jax.eval import captions, metrics, report, scoring

HAS_JAVA = shutil.which("java") is not None


# --------------------------------------------------------------------------------------------
# Text answers
# --------------------------------------------------------------------------------------------

def test_normalise_answer():
    assert metrics.normalise_answer("Yes.") == "yes"
    assert metrics.normalise_answer("  Sparse_Residential \n") == "sparse residential"
    assert metrics.normalise_answer("Airport!!") == "airport"
    assert metrics.normalise_answer(None) == ""


def test_classification_accuracy_hand_computed():
    preds = ["Forest.", "water", "beach", "desert"]
    labels = ["forest", "water", "forest", "forest"]
    classes = [["forest", "water", "beach"]] * 4
    res = metrics.classification_accuracy(preds, labels, classes)
    assert res["accuracy"] == pytest.approx(2 / 4)
    assert res["correct"] == 2
    assert res["invalid_rate"] == pytest.approx(1 / 4)  # "desert" is not a candidate
    assert res["per_class"] == {"forest": pytest.approx(1 / 3), "water": 1.0}


def test_vqa_accuracy_per_type_and_average():
    preds = ["Yes.", "no", "3", "yes", "Rural"]
    truth = ["yes", "yes", "3", "no", "rural"]
    types = ["presence", "presence", "count", "comparison", "rural_urban"]
    res = metrics.vqa_accuracy(preds, truth, types)
    assert res["per_type"] == {"comparison": 0.0, "count": 1.0, "presence": 0.5, "rural_urban": 1.0}
    assert res["average"] == pytest.approx((0.5 + 1.0 + 0.0 + 1.0) / 4)
    assert res["overall"] == pytest.approx(3 / 5)
    sub = metrics.vqa_accuracy(preds, truth, types, average_over=("presence", "comparison"))
    assert sub["average"] == pytest.approx(0.25)


# --------------------------------------------------------------------------------------------
# Grounding
# --------------------------------------------------------------------------------------------

def test_box_iou():
    assert metrics.box_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert metrics.box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert metrics.box_iou([10, 10, 0, 0], [0, 0, 10, 10]) == 1.0


# (answer, gt pixel box, (W, H), expected pixel-space IoU)
GROUNDING_CASES = [
    ("[10, 10, 50, 50]", [80, 20, 400, 100], (800, 200), 1.0),       # x by W, y by H
    ("[0, 0, 100, 100].", [0, 0, 496, 100], (1000, 100), 0.496),      # just below 0.5 in pixels
    ("The box is [0, 0, 100, 100]", [0, 0, 500, 100], (1000, 100), 0.5),  # exactly 0.5 counts
    ("[0, 0, 100, 100] [0, 0, 60, 100]", [0, 0, 60, 100], (100, 100), 0.6),  # first box only
    ("I cannot find it.", [0, 0, 10, 10], (100, 100), 0.0),          # unparsable = wrong
]


def test_grounding_accuracy_in_pixel_space():
    answers = [c[0] for c in GROUNDING_CASES]
    gts = [c[1] for c in GROUNDING_CASES]
    sizes = [c[2] for c in GROUNDING_CASES]
    ious, parsed = metrics.grounding_ious(answers, gts, sizes)
    np.testing.assert_allclose(ious, [c[3] for c in GROUNDING_CASES], atol=1e-12)
    assert parsed.tolist() == [True, True, True, True, False]
    res = metrics.grounding_accuracy(answers, gts, sizes)
    assert res["acc@0.5"] == pytest.approx(3 / 5)
    assert res["acc@0.7"] == pytest.approx(1 / 5)
    assert res["mean_iou"] == pytest.approx((1 + 0.496 + 0.5 + 0.6 + 0) / 5)
    assert res["parse_failure_rate"] == pytest.approx(1 / 5)


def test_grounding_decision_differs_from_0_100_space():
    # 1000x100 image: one 0-100 unit is 10 px in x but 1 px in y. The ground truth [0, 0, 496, 100]
    # quantises to [0, 0, 50, 100] on 0-100, where the full-image prediction would have IoU 0.5
    # (a hit); in pixels its IoU is 0.496 (a miss). The metric must decide in pixels.
    assert tasks.format_boxes([0, 0, 496, 100], 1000, 100) == "[0, 0, 50, 100]"
    assert metrics.box_iou([0, 0, 100, 100], [0, 0, 50, 100]) == 0.5
    res = metrics.grounding_accuracy(["[0, 0, 100, 100]"], [[0, 0, 496, 100]], [(1000, 100)])
    assert res["acc@0.5"] == 0.0
    # Comparing the raw 0-100 box with the pixel ground truth (no conversion) would miss a perfect
    # answer on an 800x200 image; converting with the image's own W and H hits it.
    assert metrics.box_iou([10, 10, 50, 50], [80, 20, 400, 100]) == 0.0
    res = metrics.grounding_accuracy(["[10, 10, 50, 50]"], [[80, 20, 400, 100]], [(800, 200)])
    assert res["acc@0.5"] == 1.0 and res["acc@0.7"] == 1.0


def test_grounding_several_gt_boxes_best_match_and_clipping():
    ious, _ = metrics.grounding_ious(["[10, 10, 50, 50]"], [[[0, 0, 10, 10], [80, 20, 400, 100]]], [(800, 200)])
    assert ious[0] == pytest.approx(1.0)
    # Predicted pixel box is clipped to the image: [0, 0, 100, 100] on 50x50 vs gt [0, 0, 50, 50].
    assert metrics.first_box_pixels("[0, 0, 100, 100]", 50, 50) == (0.0, 0.0, 50.0, 50.0)


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------

def _b(rows):
    return np.array(rows, dtype=bool)


# A: TP 1, FP 1, FN 1, TN 3 (IoU 1/3); B: all empty (IoU 1); C: TP 3, FP 1 (IoU 3/4).
# Totals: TP 4, FP 2, FN 1, TN 7.
PREDS = [_b([[1, 1, 0], [0, 0, 0]]), _b([[0, 0], [0, 0]]), _b([[1, 1], [1, 1]])]
GTS = [_b([[1, 0, 0], [1, 0, 0]]), _b([[0, 0], [0, 0]]), _b([[1, 1], [1, 0]])]


def test_segmentation_metrics_hand_computed():
    res = metrics.segmentation_metrics(PREDS, GTS)
    assert res["iou_fg"] == pytest.approx(4 / 7)
    assert res["iou_bg"] == pytest.approx(7 / 10)
    assert res["miou"] == pytest.approx((4 / 7 + 7 / 10) / 2)
    assert res["ciou"] == pytest.approx(4 / 7)
    assert res["giou"] == pytest.approx((1 / 3 + 1 + 3 / 4) / 3)
    with pytest.raises(ValueError, match="sample 0"):
        metrics.segmentation_metrics([np.zeros((2, 2), bool)], [np.zeros((3, 3), bool)])


def test_change_detection_metrics_hand_computed():
    res = metrics.change_detection_metrics(PREDS, GTS)
    assert res["precision"] == pytest.approx(4 / 6)
    assert res["recall"] == pytest.approx(4 / 5)
    assert res["f1"] == pytest.approx(8 / 11)
    assert res["iou"] == pytest.approx(4 / 7)
    assert res["oa"] == pytest.approx(11 / 14)
    empty = metrics.change_detection_metrics([np.zeros_like(g) for g in GTS], GTS)
    assert (empty["precision"], empty["recall"], empty["f1"], empty["iou"]) == (0.0, 0.0, 0.0, 0.0)
    assert empty["oa"] == pytest.approx(9 / 14)  # 14 pixels, 5 changed (TP + FN)


def test_parse_failure_rate():
    assert metrics.parse_failure_rate([True, False, False, False]) == 0.25
    assert metrics.parse_failure_rate([]) is None


# --------------------------------------------------------------------------------------------
# Caption metrics
# --------------------------------------------------------------------------------------------

CAP_PREDS = ["A dog runs on the grass.", "Two planes are parked near the runway", "many houses"]
CAP_REFS = [["a dog is running on green grass", "the dog runs on the grass"],
            ["two airplanes parked near a runway", "planes are parked beside the runway."],
            ["a road is built and many houses are constructed"]]
# The same, tokenised by hand the way the Java-free tokenizer is documented to do it.
CAP_PREDS_TOK = ["a dog runs on the grass", "two planes are parked near the runway", "many houses"]
CAP_REFS_TOK = [["a dog is running on green grass", "the dog runs on the grass"],
                ["two airplanes parked near a runway", "planes are parked beside the runway"],
                ["a road is built and many houses are constructed"]]


def _direct_scores(gts, res, meteor=None):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"Bleu_{i + 1}": b for i, b in enumerate(bleu)}
    out["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = Cider().compute_score(gts, res)[0]
    if meteor is not None:
        out["METEOR"] = meteor.compute_score(gts, res)[0]
    return out


def test_caption_metrics_java_free_equal_pycocoevalcap():
    res = captions.caption_metrics(CAP_PREDS, CAP_REFS, mode="java_free")
    assert res["mode"] == "java_free" and "Java-free" in res["note"]
    assert res["METEOR"] is None
    gts = {i: refs for i, refs in enumerate(CAP_REFS_TOK)}
    hyp = {i: [p] for i, p in enumerate(CAP_PREDS_TOK)}
    for key, value in _direct_scores(gts, hyp).items():
        assert res[key] == pytest.approx(value, abs=1e-12), key


def test_caption_metrics_perfect_match_hand_computed():
    preds = ["a red car on the road", "two white boats in the harbour"]
    res = captions.caption_metrics(preds, [[p] for p in preds], mode="java_free")
    for n in range(1, 5):
        assert res[f"Bleu_{n}"] == pytest.approx(1.0, abs=1e-6)
    assert res["ROUGE_L"] == pytest.approx(1.0)
    assert res["CIDEr"] == pytest.approx(10.0)  # cosine 1 for each n, x10, no length penalty


def test_caption_metrics_auto_without_java_is_labelled(monkeypatch):
    monkeypatch.setattr(captions.shutil, "which", lambda name: None)
    assert captions.resolve_mode("auto") == "java_free"
    res = captions.caption_metrics(CAP_PREDS, CAP_REFS)
    assert res["mode"] == "java_free" and res["METEOR"] is None
    with pytest.raises(RuntimeError, match="java"):
        captions.caption_metrics(CAP_PREDS, CAP_REFS, mode="official")


@pytest.fixture(scope="module")
def meteor():
    if not HAS_JAVA:
        pytest.skip("java not on PATH")
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = captions.get_meteor()
    assert isinstance(scorer, Meteor)
    return scorer


@pytest.mark.skipif(not HAS_JAVA, reason="java not on PATH")
def test_caption_metrics_official_equal_pycocoevalcap(meteor):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    res = captions.caption_metrics(CAP_PREDS, CAP_REFS, mode="official")  # default process-wide METEOR
    assert res["mode"] == "official"
    # COCOEvalCap.evaluate without SPICE: PTB-tokenise gts and res, then each scorer.
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(CAP_REFS)})
    hyp = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(CAP_PREDS)})
    direct = _direct_scores(gts, hyp, meteor)
    assert set(direct) == set(captions.METRIC_KEYS)
    for key, value in direct.items():
        assert res[key] == pytest.approx(value, abs=1e-12), key
    assert 0.0 < res["METEOR"] < 1.0


# --------------------------------------------------------------------------------------------
# Scoring against records
# --------------------------------------------------------------------------------------------

CLS_CLASSES = ["forest", "water", "beach"]


def _records(task, gts):
    return [{"id": f"r{i}", "task": task, "image": f"images/{i}.png", "conversations": [], "gt": gt}
            for i, gt in enumerate(gts)]


def test_score_cls_and_baselines():
    recs = _records("cls", [{"label": l, "classes": CLS_CLASSES} for l in ["forest", "water", "forest", "forest"]])
    res = scoring.score_task("cls", recs, ["Forest.", "water", "beach", "desert"])
    assert res["metrics"]["accuracy"] == pytest.approx(0.5)
    assert res["metrics"]["parse_failure_rate"] == pytest.approx(0.25)
    # answers may also be given by record id
    by_id = scoring.score_task("cls", recs, {"r0": "forest", "r1": "forest", "r2": "forest", "r3": "x"})
    assert by_id["metrics"]["accuracy"] == pytest.approx(0.5)
    base = scoring.trivial_baselines("cls", recs, None)
    assert base["majority_class"]["details"]["answer"] == "forest"
    assert base["majority_class"]["metrics"]["accuracy"] == pytest.approx(3 / 4)
    assert base["chance"]["metrics"]["accuracy"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="record r1: no answer"):
        scoring.score_task("cls", recs, {"r0": "forest"})


def test_score_vqa_and_always_yes():
    types = ["presence", "presence", "count", "comparison", "rural_urban"]
    truth = ["yes", "yes", "3", "no", "rural"]
    recs = _records("vqa", [{"answer": a, "question_type": t} for a, t in zip(truth, types)])
    res = scoring.score_task("vqa", recs, ["Yes.", "no", "3", "yes", "Rural"])
    assert res["metrics"]["average"] == pytest.approx(0.625)
    assert res["metrics"]["acc/presence"] == pytest.approx(0.5)
    base = scoring.trivial_baselines("vqa", recs, None)["always_yes"]["metrics"]
    assert base["overall"] == pytest.approx(2 / 5)
    assert base["average"] == pytest.approx((1 + 0 + 0 + 0) / 4)


def test_score_vg_and_centre_box():
    recs = _records("vg", [{"boxes_px": [[80, 20, 400, 100]], "width": 800, "height": 200},
                           {"boxes_px": [[50, 25, 150, 75]], "width": 200, "height": 100}])
    res = scoring.score_task("vg", recs, ["[10, 10, 50, 50]", "nothing"], return_samples=True)
    assert res["metrics"]["acc@0.5"] == 0.5 and res["metrics"]["parse_failure_rate"] == 0.5
    assert [s["parsed"] for s in res["samples"]] == [True, False]
    # centre box [25, 25, 75, 75] -> pixels (200, 50, 600, 150) on 800x200: IoU with the first gt
    # = (200 * 50) / (400 * 100 + 320 * 80 - 200 * 50) = 10000 / 55600; exact hit on the second.
    base = scoring.trivial_baselines("vg", recs, None)["centre_box"]["metrics"]
    assert base["acc@0.5"] == 0.5
    assert base["mean_iou"] == pytest.approx((10000 / 55600 + 1) / 2)
    with pytest.raises(ValueError, match="record r0: gt has no 'width'"):
        scoring.score_task("vg", _records("vg", [{"boxes_px": [[0, 0, 1, 1]]}]), ["[0, 0, 1, 1]"])


def test_score_ref_caption_metrics_plus_exact_match():
    recs = _records("ref", [{"box_px": [0, 0, 10, 10], "answer": "1 windmill at the top.", "width": 100, "height": 100},
                            {"box_px": [0, 0, 10, 10], "answer": "2 ships at the left.", "width": 100, "height": 100}])
    answers = ["1 Windmill at the top", "1 ship at the left."]
    res = scoring.score_task("ref", recs, answers, caption_mode="java_free")
    assert res["metrics"]["exact_match"] == 0.5
    assert res["details"]["caption_mode"] == "java_free"
    direct = _direct_scores({0: ["1 windmill at the top"], 1: ["2 ships at the left"]},
                            {0: ["1 windmill at the top"], 1: ["1 ship at the left"]})
    for key, value in direct.items():
        assert res["metrics"][key] == pytest.approx(value, abs=1e-12), key
    base = scoring.trivial_baselines("ref", recs, None, caption_mode="java_free")["fixed_caption"]
    assert base["details"]["answer"] == "1 windmill at the top."
    assert base["metrics"]["exact_match"] == 0.5


def test_score_cap_fixed_caption_baseline():
    recs = _records("ccd", [{"references": ["the scene is the same as before", "no change"]},
                            {"references": ["a road is built", "The scene is the same as before."]}])
    base = scoring.trivial_baselines("ccd", recs, None, caption_mode="java_free")["fixed_caption"]
    assert base["details"]["answer"] == "the scene is the same as before"
    assert base["metrics"]["ROUGE_L"] == pytest.approx(1.0)  # it is one of each sample's references


@pytest.fixture
def mask_root(tmp_path):
    # 4x6 masks, foreground rows 0-1, columns 2-5 (8 pixels).
    gt = np.zeros((4, 6), dtype=np.uint8)
    gt[0:2, 2:6] = 255
    (tmp_path / "masks").mkdir()
    Image.fromarray(gt, mode="L").save(tmp_path / "masks" / "a.png")
    return tmp_path


def _mask_records(task):
    return _records(task, [{"mask": "masks/a.png", "label": "water", "width": 6, "height": 4}] * 2)


# 2x2 grid [[0, 1], [0, 0]]: nearest upsampling to 4x6 gives rows 0-1, columns 3-5 (6 pixels),
# so each sample has I = 6, U = 8. The second answer has a short row (repaired, counted as failure).
MASK_ANSWERS = ["others*1, water*1\nothers*2", "others*1, water*1\nothers*1"]


def test_score_seg_from_rle_and_all_background(mask_root):
    res = scoring.score_task("seg", _mask_records("seg"), MASK_ANSWERS, mask_root, grid_size=2)
    m = res["metrics"]
    assert m["giou"] == pytest.approx(0.75)
    assert m["ciou"] == pytest.approx(12 / 16)
    assert m["miou"] == pytest.approx((12 / 16 + 32 / 36) / 2)  # bg: TN 32, FN 4, FP 0
    assert m["parse_failure_rate"] == 0.5
    base = scoring.trivial_baselines("seg", _mask_records("seg"), mask_root)["all_background"]["metrics"]
    assert base["giou"] == 0.0 and base["ciou"] == 0.0
    assert base["miou"] == pytest.approx((0 + 32 / 48) / 2)


def test_score_cd_from_rle_and_all_background(mask_root):
    m = scoring.score_task("cd", _mask_records("cd"), MASK_ANSWERS, mask_root, grid_size=2)["metrics"]
    assert m["precision"] == 1.0
    assert m["recall"] == pytest.approx(12 / 16)
    assert m["f1"] == pytest.approx(6 / 7)
    assert m["iou"] == pytest.approx(12 / 16)
    assert m["oa"] == pytest.approx(44 / 48)
    base = scoring.trivial_baselines("cd", _mask_records("cd"), mask_root)["all_background"]["metrics"]
    assert (base["precision"], base["recall"], base["f1"], base["iou"]) == (0.0, 0.0, 0.0, 0.0)
    assert base["oa"] == pytest.approx(32 / 48)


def test_gt_mask_must_stay_inside_root(mask_root):
    recs = _records("seg", [{"mask": "../outside.png", "label": "water", "width": 6, "height": 4}])
    with pytest.raises(ValueError, match="record r0: .*outside the data root"):
        scoring.score_task("seg", recs, ["others*2\nothers*2"], mask_root, grid_size=2)
    recs = _records("seg", [{"mask": "masks/missing.png", "label": "water", "width": 6, "height": 4}])
    with pytest.raises(ValueError, match="record r0: gt mask file .* does not exist"):
        scoring.score_task("seg", recs, ["others*2\nothers*2"], mask_root, grid_size=2)
    recs = _records("seg", [{"mask": "masks/a.png", "label": "water", "width": 8, "height": 4}])
    with pytest.raises(ValueError, match="record r0: gt mask masks/a.png is 6x4"):
        scoring.score_task("seg", recs, ["others*2\nothers*2"], mask_root, grid_size=2)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def test_write_report(tmp_path):
    results = {"vg": {"task": "vg", "n": 5, "metrics": {"acc@0.5": 0.6, "acc@0.7": float("nan")},
                      "details": {}, "samples": [{"id": "a"}]},
               "cap": {"task": "cap", "n": 2, "metrics": {"CIDEr": np.float64(1.25), "METEOR": None},
                       "details": {"caption_mode": "java_free", "caption_note": "no Java"}}}
    baselines = {"vg": {"centre_box": {"metrics": {"acc@0.5": 0.5, "acc@0.7": 0.25}}}}
    paths = report.write_report(tmp_path, results, baselines, meta={"checkpoint": "ckpt"})
    data = json.loads(paths["metrics_json"].read_text())
    assert data["results"]["vg"]["metrics"] == {"acc@0.5": 0.6, "acc@0.7": None}
    assert "samples" not in data["results"]["vg"]
    assert data["results"]["cap"]["metrics"]["CIDEr"] == 1.25
    assert data["meta"]["checkpoint"] == "ckpt"
    md = paths["report_md"].read_text()
    assert "| vg | acc@0.5 | 0.6000 | 0.5000 (centre_box) |" in md
    assert "| vg | acc@0.7 | n/a | 0.2500 (centre_box) |" in md
    assert "| cap | CIDEr | 1.2500 | - |" in md
    assert "| cap | METEOR | n/a | - |" in md
    assert "captions: java_free" in md
