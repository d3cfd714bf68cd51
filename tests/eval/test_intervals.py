"""Headline metrics recomputed from per-record samples, their bootstrap intervals, and the intervals
in the two-model comparison report. Expected values come from hand counts or an independent
formula (numpy on the full masks, pycocoevalcap itself, the normal approximation), never from the
code under test."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocoevalcap.cider.cider import Cider

from rsunivlm_jax import tasks
from rsunivlm_jax.eval import captions, comparison, intervals, report, scoring

HAS_JAVA = shutil.which("java") is not None
WORDS = "a the two many planes ship harbor green field road river near next to is are parked white".split()


def _records(task, gts):
    return [{"id": f"r{i}", "task": task, "image": f"images/{i}.png", "conversations": [], "gt": gt}
            for i, gt in enumerate(gts)]


def _bool_samples(hits, prefix="r"):
    return [{"id": f"{prefix}{i}", "correct": bool(h)} for i, h in enumerate(hits)]


# --------------------------------------------------------------------------------------------
# headline_from_samples == score_task's metric, per task kind
# --------------------------------------------------------------------------------------------

def test_cls_vg_vqa_headline_from_samples():
    classes = ["forest", "water", "beach"]
    recs = _records("cls", [{"label": l, "classes": classes} for l in ["forest", "water", "forest", "beach", "water"]])
    res = scoring.score_task("cls", recs, ["Forest.", "beach", "forest", "beach", "x"], return_samples=True)
    assert intervals.headline_from_samples("cls", res["samples"]) == res["metrics"]["accuracy"] == 3 / 5

    recs = _records("vg", [{"boxes_px": [[0, 0, 100, 100]], "width": 100, "height": 100}] * 4)
    # IoUs: 1, 0.49, 0.5 (half the box), unparsed -> Acc@0.5 = 2 / 4 (IoU >= 0.5 counts)
    res = scoring.score_task("vg", recs, ["[0, 0, 100, 100]", "[0, 0, 49, 100]", "[0, 0, 50, 100]", "none"],
                             return_samples=True)
    assert intervals.headline_from_samples("vg", res["samples"]) == res["metrics"]["acc@0.5"] == 2 / 4

    types = ["presence", "count", "comparison", "presence", "area", "comparison", "presence"]
    truth = ["yes", "3", "no", "no", "10", "yes", "yes"]
    answers = ["yes", "3", "yes", "no", "10", "yes", "no"]  # yes/no questions: 1, 0, 1, 1, 0 right
    recs = _records("vqa", [{"answer": a, "question_type": t} for a, t in zip(truth, types)])
    res = scoring.score_task("vqa", recs, answers, return_samples=True)
    assert intervals.headline_from_samples("vqa", res["samples"]) == 3 / 5
    # the same number load_evaluation has always computed from predictions.jsonl
    yes_no = [s["correct"] for s in res["samples"] if s["question_type"] in ("presence", "comparison")]
    assert intervals.headline_from_samples("vqa", res["samples"]) == float(np.mean(yes_no))


@pytest.fixture(scope="module")
def masks(tmp_path_factory):
    """12 records with random 8x8 ground truths and random 4x4 answer grids (nearest x2 upsampling)."""
    root = tmp_path_factory.mktemp("masks")
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    gts, grids = [], []
    for i in range(12):
        gt = rng.random((8, 8)) < rng.uniform(0.05, 0.6)
        Image.fromarray(gt.astype(np.uint8) * 255, mode="L").save(root / "masks" / f"{i}.png")
        gts.append(gt)
        grids.append(rng.random((4, 4)) < 0.4)
    grids[3][:] = False  # an empty prediction
    recs = [{"id": f"m{i}", "task": "seg", "image": "x.png", "gt": {"mask": f"masks/{i}.png", "label": "water",
                                                                    "width": 8, "height": 8}} for i in range(12)]
    answers = [tasks.encode_mask(g, "water") for g in grids]
    preds = [np.kron(g, np.ones((2, 2), dtype=bool)) for g in grids]  # independent of grid_to_mask
    return {"root": root, "records": recs, "answers": answers, "gts": gts, "preds": preds}


@pytest.mark.parametrize("task", ["seg", "cd"])
def test_mask_samples_hold_pixel_counts(masks, task):
    recs = [{**r, "task": task} for r in masks["records"]]
    res = scoring.score_task(task, recs, masks["answers"], masks["root"], grid_size=4, return_samples=True)
    p, g = np.stack(masks["preds"]), np.stack(masks["gts"])
    counts = {"tp": (p & g).sum((1, 2)), "fp": (p & ~g).sum((1, 2)), "fn": (~p & g).sum((1, 2)),
              "tn": (~p & ~g).sum((1, 2))}
    for k, v in counts.items():
        assert [s[k] for s in res["samples"]] == v.tolist(), k
        assert all(type(s[k]) is int for s in res["samples"])
    tp, fp, fn, tn = (int(counts[k].sum()) for k in ("tp", "fp", "fn", "tn"))
    if task == "seg":
        expected = (tp / (tp + fp + fn) + tn / (tn + fp + fn)) / 2
        assert res["metrics"]["miou"] == pytest.approx(expected, rel=1e-12)
        assert intervals.headline_from_samples("seg", res["samples"]) == res["metrics"]["miou"]
    else:
        expected = 2 * tp / (2 * tp + fp + fn)
        assert res["metrics"]["f1"] == pytest.approx(expected, rel=1e-12)
        assert intervals.headline_from_samples("cd", res["samples"]) == res["metrics"]["f1"]
    # the pooled counts of the details are the sums of the per-record ones
    if task == "cd":
        assert res["details"] == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def test_mask_headline_edge_cases():
    # seg: nothing in the foreground anywhere -> only the background IoU is defined (= 1)
    empty = [{"id": "a", "tp": 0, "fp": 0, "fn": 0, "tn": 64}]
    assert intervals.headline_from_samples("seg", empty) == 1.0
    # cd: an all-background prediction -> P = R = 0 -> F1 0
    assert intervals.headline_from_samples("cd", [{"id": "a", "tp": 0, "fp": 0, "fn": 5, "tn": 59}]) == 0.0
    assert intervals.headline_from_samples("cd", []) == 0.0 and intervals.headline_from_samples("seg", []) is None
    assert intervals.headline_from_samples("cls", []) is None


def _corpus(seed, n):
    rng = np.random.default_rng(seed)

    def sent(lo, hi):
        return " ".join(rng.choice(WORDS, rng.integers(lo, hi)))

    refs = [[sent(1, 12) for _ in range(rng.integers(1, 5))] for _ in range(n)]
    preds = [sent(0, 12) for _ in range(n)]
    return preds, refs


@pytest.mark.parametrize("task", ["cap", "ref"])
def test_caption_samples_hold_per_record_cider_java_free(task):
    preds, refs = _corpus(1 if task == "cap" else 2, 40)
    recs = _records(task, [{"references": r, "answer": r[0]} for r in refs])
    res = scoring.score_task(task, recs, preds, caption_mode="java_free", return_samples=True)
    # pycocoevalcap's own per-image CIDEr on the same (already simple-tokenised) text
    mean, per_image = Cider().compute_score({i: r for i, r in enumerate(refs)}, {i: [p] for i, p in enumerate(preds)})
    np.testing.assert_allclose([s["cider"] for s in res["samples"]], per_image, rtol=1e-12, atol=1e-15)
    assert res["metrics"]["CIDEr"] == pytest.approx(mean, rel=1e-12)
    assert intervals.headline_from_samples(task, res["samples"]) == res["metrics"]["CIDEr"]


def test_caption_metrics_per_sample_list():
    preds, refs = _corpus(3, 25)
    out = captions.caption_metrics(preds, refs, mode="java_free")
    assert len(out["CIDEr_per_sample"]) == 25
    assert out["CIDEr"] == pytest.approx(sum(out["CIDEr_per_sample"]) / 25, rel=1e-13)
    assert captions.caption_metrics([], [], mode="java_free")["CIDEr_per_sample"] == []


@pytest.mark.skipif(not HAS_JAVA, reason="java not on PATH")
def test_caption_samples_official_mode():
    preds, refs = _corpus(4, 12)
    recs = _records("cap", [{"references": r} for r in refs])
    res = scoring.score_task("cap", recs, preds, caption_mode="official", return_samples=True)
    assert res["details"]["caption_mode"] == "official"
    assert intervals.headline_from_samples("cap", res["samples"]) == res["metrics"]["CIDEr"]
    assert res["metrics"]["CIDEr"] == pytest.approx(np.mean([s["cider"] for s in res["samples"]]), rel=1e-12)


def test_missing_statistics_is_a_clear_error():
    with pytest.raises(intervals.MissingStatistics, match=r"task seg: 2 sample\(s\) have no 'tp' \(e.g. a, b\)"):
        intervals.bootstrap_interval("seg", [{"id": "a", "iou": 0.5}, {"id": "b", "iou": 0.1}])
    with pytest.raises(intervals.MissingStatistics, match="'cider'"):
        intervals.headline_from_samples("cap", [{"id": "a", "parsed": True}])


# --------------------------------------------------------------------------------------------
# Bootstrap intervals
# --------------------------------------------------------------------------------------------

def test_interval_contains_estimate_and_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    widths = {}
    for n in (50, 200, 800):
        hits = rng.random(n) < 0.6
        p = hits.mean()
        low, high = intervals.bootstrap_interval("cls", _bool_samples(hits))
        assert low < p < high
        half = 1.959964 * np.sqrt(p * (1 - p) / n)  # Wald half-width
        assert (high - low) / 2 == pytest.approx(half, rel=0.15), n
        widths[n] = high - low
    assert widths[50] > widths[200] > widths[800]
    assert widths[200] / widths[800] == pytest.approx(2.0, rel=0.2)  # ~ 1 / sqrt(n)


def test_interval_of_pooled_mask_metric():
    rng = np.random.default_rng(2)
    samples = [{"id": str(i), "tp": int(t), "fp": int(f), "fn": int(m), "tn": 400 - int(t + f + m)}
               for i, (t, f, m) in enumerate(rng.integers(0, 60, size=(200, 3)))]
    for task in ("seg", "cd"):
        value = intervals.headline_from_samples(task, samples)
        low, high = intervals.bootstrap_interval(task, samples)
        assert low < value < high and high - low < 0.1


def test_interval_is_deterministic_with_a_seed():
    hits = np.random.default_rng(3).random(200) < 0.5
    s = _bool_samples(hits)
    assert intervals.bootstrap_interval("cls", s, seed=7) == intervals.bootstrap_interval("cls", s, seed=7)
    cider = [{"id": str(i), "cider": float(v)} for i, v in enumerate(np.random.default_rng(3).gamma(1, 1, 200))]
    assert intervals.bootstrap_interval("cap", cider, seed=7) == intervals.bootstrap_interval("cap", cider, seed=7)
    assert intervals.bootstrap_interval("cap", cider, seed=7) != intervals.bootstrap_interval("cap", cider, seed=8)
    assert intervals.bootstrap_interval("cls", []) is None
    with pytest.raises(ValueError, match="level"):
        intervals.bootstrap_interval("cls", s, level=95)


def test_paired_difference_of_identical_runs_is_exactly_zero():
    hits = np.random.default_rng(4).random(200) < 0.5
    d = intervals.paired_difference("cls", _bool_samples(hits), _bool_samples(hits))
    assert d == {"difference": 0.0, "low": 0.0, "high": 0.0}
    cider = [{"id": str(i), "cider": float(v)} for i, v in enumerate(np.random.default_rng(5).gamma(1, 1, 200))]
    assert intervals.paired_difference("cap", cider, cider[::-1]) == {"difference": 0.0, "low": 0.0, "high": 0.0}


def test_paired_difference_resolves_a_clear_difference():
    rng = np.random.default_rng(6)
    a, b = rng.random(200) < 0.9, rng.random(200) < 0.1
    d = intervals.paired_difference("cls", _bool_samples(a), _bool_samples(b))
    assert d["difference"] == pytest.approx(a.mean() - b.mean(), abs=1e-15)
    assert 0 < d["low"] < d["difference"] < d["high"]


def test_pairing_narrows_the_interval():
    """B = A with 10 of 200 records flipped from right to wrong: the true difference 0.05 is resolved by
    the paired interval (its width follows sqrt(discordant) / n), not by two independent ones."""
    rng = np.random.default_rng(7)
    a = rng.random(200) < 0.6
    b = a.copy()
    b[np.flatnonzero(a)[:10]] = False
    d = intervals.paired_difference("cls", _bool_samples(a), _bool_samples(b))
    assert d["difference"] == pytest.approx(0.05)
    assert d["low"] > 0
    # paired standard error of a difference of proportions: sqrt((n10 + n01) / n^2 - diff^2 / n)
    se = np.sqrt(10 / 200 ** 2 - 0.05 ** 2 / 200)
    assert (d["high"] - d["low"]) / 2 == pytest.approx(1.959964 * se, rel=0.25)
    (la, ha), (lb, hb) = (intervals.bootstrap_interval("cls", _bool_samples(x)) for x in (a, b))
    assert d["high"] - d["low"] < np.hypot(ha - la, hb - lb) / 2  # vs treating the runs as independent


def test_pairing_aligns_by_id_and_refuses_different_records():
    hits = np.random.default_rng(8).random(50) < 0.5
    a = _bool_samples(hits)
    shuffled = [a[i] for i in np.random.default_rng(9).permutation(50)]
    assert intervals.paired_difference("cls", a, shuffled)["high"] == 0.0
    with pytest.raises(ValueError, match=r"1 only in the first run \(r49\); 1 only in the second run \(x\)"):
        intervals.paired_difference("cls", a, a[:-1] + [{"id": "x", "correct": True}])
    with pytest.raises(ValueError, match="repeated in the second run: r0"):
        intervals.paired_difference("cls", a, a[:-1] + [a[0]])


# --------------------------------------------------------------------------------------------
# The comparison report
# --------------------------------------------------------------------------------------------

REPORT_TASKS = ("cls", "vqa", "vg", "cap", "seg", "cd")


def _write_eval(out, task, recs, answers, root, *, old_format=False):
    """metrics.json + predictions.jsonl in the layout `evaluate.write_outputs` writes."""
    res = scoring.score_task(task, recs, answers, root, grid_size=4, caption_mode="java_free", return_samples=True)
    base = scoring.trivial_baselines(task, recs, root, grid_size=4, caption_mode="java_free")
    out.mkdir(parents=True)
    drop = {"id", "answer"} | ({"tp", "fp", "fn", "tn", "cider"} if old_format else set())
    preds = [{"id": s["id"], "task": task, "answer": s["answer"],
              "score": {k: v for k, v in s.items() if k not in drop}} for s in res["samples"]]
    (out / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds), encoding="utf-8")
    result = {k: v for k, v in res.items() if k != "samples"}
    payload = {"meta": {"task": task}, "results": {task: result}, "baselines": {task: base}}
    (out / "metrics.json").write_text(json.dumps(report.to_jsonable(payload)), encoding="utf-8")
    return out


def _task_data(task, masks, n=24):
    """(records, perfect answers, wrong answers) for `task` (n records; masks: 12 records)."""
    if task == "cls":
        recs = _records("cls", [{"label": ["forest", "water"][i % 2], "classes": ["forest", "water"]}
                                for i in range(n)])
        return recs, [r["gt"]["label"] for r in recs], [{"forest": "water", "water": "forest"}[r["gt"]["label"]]
                                                         for r in recs]
    if task == "vqa":
        types = ["presence", "comparison", "count"]
        recs = _records("vqa", [{"answer": ["yes", "no", "2"][i % 3], "question_type": types[i % 3]} for i in range(n)])
        return recs, [r["gt"]["answer"] for r in recs], ["maybe"] * n
    if task == "vg":
        recs = _records("vg", [{"boxes_px": [[0, 0, 50, 50]], "width": 100, "height": 100}] * n)
        return recs, ["[0, 0, 50, 50]"] * n, ["[60, 60, 90, 90]"] * n
    if task == "cap":
        preds, refs = _corpus(11, n)
        recs = _records("cap", [{"references": r} for r in refs])
        return recs, [r[0] for r in refs], ["zzz"] * n
    recs = [{**r, "task": task} for r in masks["records"]]
    perfect = [tasks.encode_mask(tasks.mask_to_grid(g, 4), "water") for g in masks["gts"]]
    return recs, perfect, [tasks.encode_mask(~tasks.mask_to_grid(g, 4), "water") for g in masks["gts"]]


@pytest.fixture(scope="module")
def eval_dirs(masks, tmp_path_factory):
    """Model A right on every record, model B right on the even records only, the control wrong
    everywhere; plus an old-format copy of A (no per-record pixel counts / CIDEr)."""
    top = tmp_path_factory.mktemp("evals")
    dirs = {}
    for task in REPORT_TASKS:
        recs, good, bad = _task_data(task, masks)
        half = [g if i % 2 == 0 else w for i, (g, w) in enumerate(zip(good, bad))]
        for name, answers in (("a", good), ("b", half), ("ctrl", bad)):
            dirs[name, task] = _write_eval(top / name / task, task, recs, answers, masks["root"])
        dirs["old", task] = _write_eval(top / "old" / task, task, recs, good, masks["root"], old_format=True)
    return dirs


def _load(eval_dirs, name):
    return {t: comparison.load_evaluation(eval_dirs[name, t]) for t in REPORT_TASKS}


def test_compare_adds_intervals_and_the_control_verdict(eval_dirs):
    evals = {"a": _load(eval_dirs, "a"), "b": _load(eval_dirs, "b")}
    payload = comparison.compare(evals, _load(eval_dirs, "ctrl"))
    assert payload == comparison.compare(evals, _load(eval_dirs, "ctrl"))  # deterministic
    boot = payload["intervals"]
    assert (boot["level"], boot["n_boot"], boot["seed"]) == (0.95, 1000, 0)
    for task in REPORT_TASKS:
        name = comparison.HEADLINE[task]
        for m in ("a", "b"):
            iv = boot["models"][m][task]
            assert iv["metric"] == name and iv["value"] == payload["models"][m][task]["metrics"][name]
            assert iv["low"] <= iv["value"] <= iv["high"]
        d = boot["difference"][task]
        assert d["difference"] == pytest.approx(payload["comparison"][task][name]["difference"], abs=1e-12)
        assert 0 < d["low"] <= d["difference"] <= d["high"], task  # A beats B on half the records
        drop = payload["control_shuffled_images"][task]["drop"]
        assert drop["reads_image"] is True and drop["low"] > 0, task
    # A perfect model: a zero-width interval at 1
    assert boot["models"]["a"]["cls"] == {"metric": "accuracy", "value": 1.0, "low": 1.0, "high": 1.0}

    text = comparison.markdown(payload, title="t", intro=[], titles={"a": "A", "b": "B"})
    row = next(line for line in text.splitlines() if line.startswith("| cls | accuracy |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    ib, db = boot["models"]["b"]["cls"], boot["difference"]["cls"]
    assert cells[2] == "1.000 [1.000, 1.000]"
    assert cells[3] == f"0.500 [{ib['low']:.3f}, {ib['high']:.3f}]"
    assert cells[4] == f"+0.500 [{db['low']:+.3f}, {db['high']:+.3f}]"
    ctrl_row = next(line for line in text.splitlines() if line.startswith("| seg | miou |") and line.endswith("yes |"))
    assert "[+" in ctrl_row.split("|")[5]


def test_compare_without_a_difference_says_not_shown(eval_dirs):
    a = _load(eval_dirs, "a")
    payload = comparison.compare({"a": a, "b": _load(eval_dirs, "a")}, _load(eval_dirs, "a"))
    for task in REPORT_TASKS:
        assert payload["intervals"]["difference"][task]["low"] == payload["intervals"]["difference"][task]["high"] == 0
        assert payload["control_shuffled_images"][task]["drop"]["reads_image"] is False
    text = comparison.markdown(payload, title="t", intro=[], titles={})
    assert text.count("| not shown |") == len(REPORT_TASKS)


def test_old_evaluation_directories_still_load(eval_dirs):
    """Predictions written before the per-record counts: numbers as before, intervals None, 'n/a'."""
    old, new = _load(eval_dirs, "old"), _load(eval_dirs, "a")
    for task in REPORT_TASKS:
        assert old[task]["result"]["metrics"] == new[task]["result"]["metrics"]
    payload = comparison.compare({"old": old, "b": _load(eval_dirs, "b")}, _load(eval_dirs, "ctrl"))
    for task in ("seg", "cd", "cap"):
        assert payload["intervals"]["models"]["old"][task] is None
        assert payload["intervals"]["difference"][task] is None
        assert payload["control_shuffled_images"][task]["drop"] is None
        assert payload["intervals"]["models"]["b"][task] is not None
    assert payload["intervals"]["models"]["old"]["cls"] is not None  # 'correct' was always kept
    text = comparison.markdown(payload, title="t", intro=[], titles={})
    row = next(line for line in text.splitlines() if line.startswith("| seg | miou |"))
    assert "[n/a]" in row.split("|")[3] and "[n/a]" in row.split("|")[5]
    ctrl_row = next(line for line in text.splitlines() if line.startswith("| cd | f1 |") and line.endswith("n/a |"))
    assert ctrl_row


def test_compare_refuses_runs_on_different_records(eval_dirs):
    b = _load(eval_dirs, "b")
    b["cls"]["samples"][-1]["id"] = "x"
    with pytest.raises(ValueError, match=r"a - b, cls: .*1 only in the first run \(r23\); "
                                         r"1 only in the second run \(x\)"):
        comparison.compare({"a": _load(eval_dirs, "a"), "b": b})
