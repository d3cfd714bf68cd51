"""The main job (`rsunivlm_jax.demo`) end to end, shortened: the "ci" variant of its config
(48 training scenes, 24 + 12 + 12 steps, 4 held-out records per task).

One pipeline run is shared by the tests (module fixture); a second run in the same workdir must
reuse everything, and a run killed (SIGKILL) at points spread over every stage and re-run in its
workdir must end with the same metrics.json. Expected values come from the evaluation harness's
files, the records and the training logs, never from the report code itself.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsunivlm_jax import demo
from rsunivlm_jax.eval.comparison import HEADLINE
from rsunivlm_jax.fileio import read_jsonl_tolerant
from tests.demo_kill_child import POINTS

TASKS = ("cls", "vqa", "vg", "ref", "cap", "ccd", "seg", "cd")
MODELS = ("gmoe", "dense")
STAGES = ("stage1", "gmoe", "dense")
REPO = Path(__file__).resolve().parents[1]


def _demo_cli(workdir: Path) -> tuple[str, float, dict]:
    """`python -m rsunivlm_jax.demo --variant ci` in a fresh process: (stdout, seconds, this run's actions)."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rsunivlm_jax.demo", "--variant", "ci", "--workdir", str(workdir),
                           "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs, _ = read_jsonl_tolerant(workdir / "demo_runs.jsonl")
    return proc.stdout, seconds, runs[-1]["actions"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo") / "run"
    stdout, seconds, actions = _demo_cli(workdir)
    return {"cfg": demo.load_config("ci"), "workdir": workdir, "stdout": stdout, "seconds": seconds,
            "actions": actions}


def _json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def test_every_artefact_is_written(run):
    w, cfg = run["workdir"], run["cfg"]
    for name in ("report.md", "metrics.json", "loss_curves.png", "gallery.png", "demo_config.json",
                 "tokenizer/tokenizer.json", "data/train.jsonl", "data/test.jsonl"):
        assert (w / name).is_file(), name
    assert _steps(w / "stage1")[-1] == cfg.train.stage1_steps
    assert _steps(w / "gmoe")[-1] == cfg.train.stage2_steps
    assert _steps(w / "dense")[-1] == cfg.train.stage2_steps
    for model in MODELS:
        for task in TASKS:
            d = w / "eval" / model / task
            assert (d / "metrics.json").is_file() and (d / "predictions.jsonl").is_file(), d
    with Image.open(w / "loss_curves.png") as img:
        assert img.format == "PNG" and min(img.size) > 100
    # The run directories are loadable checkpoints (tokenizer next to the Orbax steps), each
    # finished run has its done marker, and no evaluation is left half-way.
    for stage in STAGES:
        assert (w / stage / "tokenizer.json").is_file() and (w / stage / "DONE.json").is_file()
    assert not list((w / "eval").glob("*/*.partial"))
    assert run["actions"]["stage1"] == "trained"
    assert f"Report: {w.resolve() / 'report.md'}" in run["stdout"]
    assert "[demo 7/7]" in run["stdout"]


def test_models_have_the_configured_experts(run):
    w = run["workdir"]
    for stage, experts in (("stage1", 1), ("gmoe", 3), ("dense", 1)):
        cfg = _json(w / stage / "config.json")["model_config"]
        assert cfg["gmoe"]["num_experts"] == experts
        assert cfg["decoder"]["vocab_size"] >= cfg["tokenizer_vocab_size"] + 1
        assert cfg["image_token_id"] == cfg["tokenizer_vocab_size"]
    tok = _json(w / "tokenizer" / "tokenizer.json")
    specials = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert specials == {"<|endoftext|>": 0, "<|im_end|>": 1, "<|im_start|>": 2}
    assert len(tok["model"]["vocab"]) < 2000


def test_report_numbers_come_from_the_evaluation_files(run):
    w = run["workdir"]
    payload = _json(w / "metrics.json")
    report = (w / "report.md").read_text(encoding="utf-8")
    for model in MODELS:
        for task in TASKS:
            source = w / "eval" / model / task / "metrics.json"
            assert w / payload["sources"][model][task] == source
            evaluated = _json(source)["results"][task]
            mine = payload["models"][model][task]
            assert mine["n"] == evaluated["n"] == run["cfg"].eval.per_task
            for name, value in evaluated["metrics"].items():
                assert mine["metrics"][name] == value, (model, task, name)
    for task in TASKS:
        baselines = _json(w / "eval" / "gmoe" / task / "metrics.json")["baselines"][task]
        for name, b in baselines.items():
            for metric, value in b["metrics"].items():
                assert payload["baselines"][task][name][metric] == value
        for metric, c in payload["comparison"][task].items():
            g = payload["models"]["gmoe"][task]["metrics"][metric]
            d = payload["models"]["dense"][task]["metrics"][metric]
            assert (c["gmoe"], c["dense"]) == (g, d)
            if g is not None and d is not None:
                assert c["difference"] == pytest.approx(g - d)
    # Headline rows of report.md quote the evaluation files (3 decimals).
    for task, metric in (("cls", "accuracy"), ("vg", "acc@0.5"), ("seg", "miou"), ("cd", "f1")):
        g = _json(w / "eval" / "gmoe" / task / "metrics.json")["results"][task]["metrics"][metric]
        d = _json(w / "eval" / "dense" / task / "metrics.json")["results"][task]["metrics"][metric]
        row = next(line for line in report.splitlines() if line.startswith(f"| {task} | {metric} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert [float(c.split()[0]) for c in cells[2:5]] == pytest.approx([g, d, g - d], abs=5e-4)


def test_shuffled_image_control_is_evaluated_and_reported(run):
    """The control (G-MoE on records whose images were swapped) is evaluated on the same records
    with other images, and report.md / metrics.json quote its evaluation files."""
    w = run["workdir"]
    payload = _json(w / "metrics.json")
    report = (w / "report.md").read_text(encoding="utf-8")
    assert "## Control: does the answer depend on the image?" in report
    for task in TASKS:
        real = [json.loads(l) for l in (w / "eval" / "gmoe" / task / "predictions.jsonl").read_text().splitlines()]
        ctrl_dir = w / "eval" / demo.CONTROL / task
        ctrl = [json.loads(l) for l in (ctrl_dir / "predictions.jsonl").read_text().splitlines()]
        assert [p["id"] for p in ctrl] == [p["id"] for p in real]          # same records, same questions
        assert [p["prompt"] for p in ctrl] == [p["prompt"] for p in real]
        evaluated = _json(ctrl_dir / "metrics.json")["results"][task]["metrics"]
        mine = payload["control_shuffled_images"][task]["metrics"]
        assert {k: mine[k] for k in evaluated} == evaluated                # (+ acc/yes_no for vqa)
        metric = HEADLINE[task]
        row = next(line for line in report.splitlines()
                   if line.startswith(f"| {task} | {metric} |") and line.count("|") == 7)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[3]) == pytest.approx(mine[metric], abs=5e-4)


def test_shuffled_images_swaps_images_within_a_task(tmp_path):
    from rsunivlm_jax.data.records import RecordSource
    recs = [{"id": f"{t}{i}", "task": t, "image": f"images/{t}{i}.png", "images": [f"/r/images/{t}{i}.png"],
             "gt": {"label": i}} for t in ("cls", "cd") for i in range(3)]
    recs.append({"id": "cls3", "task": "cls", "image": "images/cls3.png", "images": ["/r/images/cls3.png"], "gt": {}})
    out = demo.shuffled_images(RecordSource("s", "/r", recs), per_task=3)
    assert [r["id"] for r in out] == ["cls0", "cls1", "cls2", "cd0", "cd1", "cd2"]  # first per_task of each task
    for r in out:
        orig = next(o for o in recs if o["id"] == r["id"])
        assert r["task"] == orig["task"] and r["gt"] == orig["gt"]
        assert r["image"] != orig["image"] and r["image"].split("/")[-1].startswith(orig["task"])
        assert r["images"] == [f"/r/{r['image']}"]                           # both path fields move together
    assert sorted(r["image"] for r in out) == sorted(o["image"] for o in recs if o["id"] != "cls3")


def test_yes_no_accuracy_matches_the_predictions(run):
    """acc/yes_no (presence + comparison questions) recomputed from the answers and the records."""
    w = run["workdir"]
    records = {json.loads(l)["id"]: json.loads(l) for l in (w / "data" / "test.jsonl").read_text().splitlines()}
    payload = _json(w / "metrics.json")
    for model in MODELS:
        preds = [json.loads(l) for l in (w / "eval" / model / "vqa" / "predictions.jsonl").read_text().splitlines()]
        hits = [p["answer"].strip().lower().rstrip(".") == records[p["id"]]["gt"]["answer"].lower()
                for p in preds if records[p["id"]]["gt"]["question_type"] in ("presence", "comparison")]
        got = payload["models"][model]["vqa"]["metrics"]["acc/yes_no"]
        assert got == (pytest.approx(float(np.mean(hits))) if hits else None)


def test_training_logs_feed_the_curves_and_summary(run):
    w, cfg = run["workdir"], run["cfg"]
    training = _json(w / "metrics.json")["meta"]["training"]
    for stage, steps in (("stage1", cfg.train.stage1_steps), ("gmoe", cfg.train.stage2_steps),
                         ("dense", cfg.train.stage2_steps)):
        rows = [json.loads(l) for l in (w / stage / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in rows if r["split"] == "train"]
        assert train[-1]["step"] == steps
        assert training[stage]["final_train_loss"] == train[-1]["loss"]


def test_gallery_has_one_panel_per_task(run):
    w = run["workdir"]
    layout = _json(w / "metrics.json")["gallery"]
    assert [p["task"] for p in layout["panels"]] == list(TASKS)
    cols, (cw, ch) = layout["columns"], layout["cell_size"]
    pad, title = layout["padding"], layout["title_height"]
    rows = -(-len(TASKS) // cols)
    with Image.open(w / "gallery.png") as img:
        arr = np.asarray(img.convert("RGB")).astype(int)
    assert arr.shape[1] == cols * (cw + pad) + pad and arr.shape[0] == rows * (title + ch + pad) + pad
    cells = []
    for k in range(len(TASKS)):
        r, c = divmod(k, cols)
        x0, y0 = pad + c * (cw + pad), pad + r * (title + ch + pad)
        strip = arr[y0:y0 + title, x0:x0 + cw]
        cell = arr[y0 + title:y0 + title + ch, x0:x0 + cw]
        assert (strip.sum(-1) < 200).any(), f"panel {k} has no title"
        assert (cell.sum(-1) < 3 * 250).mean() > 0.2, f"panel {k} is (nearly) blank"
        cells.append(cell)
    for i in range(len(cells)):
        for j in range(i + 1, len(cells)):
            assert not np.array_equal(cells[i], cells[j])
    # Each panel shows the record its prediction belongs to, with that prediction.
    for p in layout["panels"]:
        preds = [json.loads(l) for l in (w / "eval" / "gmoe" / p["task"] / "predictions.jsonl").read_text().splitlines()]
        assert {"id": p["id"], "answer": p["answer"]} in [{"id": q["id"], "answer": q["answer"]} for q in preds]


def test_rerun_resumes_instead_of_retraining(run):
    w, cfg = run["workdir"], run["cfg"]
    logs = {s: (w / s / "metrics.jsonl").read_bytes() for s in STAGES}
    ckpts = {s: _steps(w / s) for s in STAGES}
    evals = {(m, t): (w / "eval" / m / t / "metrics.json").read_bytes() for m in MODELS for t in TASKS}
    before = _json(w / "metrics.json")
    _, seconds, actions = _demo_cli(w)
    for stage in ("data", "tokenizer", *STAGES, "eval"):
        assert actions[stage] == "cached", (stage, actions)
    assert {s: (w / s / "metrics.jsonl").read_bytes() for s in STAGES} == logs
    assert {s: _steps(w / s) for s in STAGES} == ckpts
    assert {(m, t): (w / "eval" / m / t / "metrics.json").read_bytes() for m in MODELS for t in TASKS} == evals
    after = _json(w / "metrics.json")
    assert after["models"] == before["models"] and after["comparison"] == before["comparison"]
    assert seconds < run["seconds"] / 2

    # A missing evaluation is redone alone; a stage without its done marker resumes from its last
    # checkpoint.
    shutil.rmtree(w / "eval" / "dense" / "cls")
    last = _steps(w / "dense")[-1]
    shutil.rmtree(w / "dense" / "checkpoints" / str(last))
    (w / "dense" / "DONE.json").unlink()
    resumed_from = _steps(w / "dense")[-1]
    assert resumed_from < last
    _, _, actions = _demo_cli(w)
    assert actions["stage1"] == actions["gmoe"] == "cached"
    assert actions["dense"] == f"resumed from step {resumed_from}"
    assert actions["eval"] == "evaluated 1 (model, task) pairs"
    assert _steps(w / "dense")[-1] == cfg.train.stage2_steps
    rows = [json.loads(l) for l in (w / "dense" / "metrics.jsonl").read_text().splitlines() if l.strip()]
    train_steps = [r["step"] for r in rows if r["split"] == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == cfg.train.stage2_steps


def test_a_different_config_in_the_same_workdir_is_refused(run):
    cfg = demo.load_config("ci", ["train.stage1_steps=25"])
    with pytest.raises(demo.DemoError, match="different config"):
        demo.Demo(cfg, run["workdir"], progress=False).check_config()


def test_config_overrides():
    cfg = demo.load_config("ci", ["train.stage1_steps=7", "train.lr=0.01", "eval.caption_mode=auto"])
    assert (cfg.train.stage1_steps, cfg.train.lr, cfg.eval.caption_mode) == (7, 0.01, "auto")
    with pytest.raises(ValueError, match="unknown config field"):
        demo.load_config("ci", ["train.nope=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        demo.load_config("ci", ["train.lr"])
    assert demo.load_config("quick").variant == "quick"


def test_metrics_json_holds_no_machine_paths(run):
    text = (run["workdir"] / "metrics.json").read_text(encoding="utf-8")
    assert str(run["workdir"].resolve()) not in text and str(Path.home()) not in text


def test_killed_anywhere_and_rerun_ends_with_the_same_metrics(run, tmp_path):
    """The kill matrix: one workdir, one process per kill point, each SIGKILLed (no cleanup) at its
    point (tests/demo_kill_child.py: the data writer, the tokenizer, steps and checkpoint saves of
    both stage-2 runs and stage 1, a finished run without its marker, an evaluation of each model
    and of the control, both report files); every re-run resumes from what the last one left.
    The final uninterrupted run ends with a metrics.json byte-identical to the clean run's. The
    compiled XLA programs of the clean run are copied in, so the restarts do not compile again."""
    w = tmp_path / "killed"
    w.mkdir()
    shutil.copytree(run["workdir"] / "jax_cache", w / "jax_cache")
    args = ["--variant", "ci", "--workdir", str(w), "--no-progress"]
    for point in POINTS:
        proc = subprocess.run([sys.executable, "-m", "tests.demo_kill_child", point, *args], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-3000:])
        if point in ("stage1-save", "gmoe-final-save"):  # the save was cut short: not a checkpoint
            stage, step = ("stage1", 16) if point == "stage1-save" else ("gmoe", 12)
            assert 8 in _steps(w / stage) and step not in _steps(w / stage), point
        if point == "dense-done":
            assert _steps(w / "dense")[-1] == run["cfg"].train.stage2_steps and not (w / "dense" / "DONE.json").exists()
        if point.startswith("eval-"):
            assert list((w / "eval").glob("*/*.partial")), point  # killed with an evaluation half-way
        if point.startswith("report-"):
            assert not (w / "metrics.json").exists() and (w / "report.md").is_file() == (point == "report-metrics")
    _demo_cli(w)
    assert (w / "metrics.json").read_bytes() == (run["workdir"] / "metrics.json").read_bytes()
    assert not list((w / "eval").glob("*/*.partial"))


# ---- diagnosis and the seed study (on the run above) -------------------------------------------

def test_diagnose_counts_every_answer_token_and_swaps_images(run):
    from rsunivlm_jax.data.records import load_source
    from rsunivlm_jax.eval import diagnose
    from rsunivlm_jax.inference.predict import load_model
    w = run["workdir"]
    model = load_model(w / "gmoe")
    source = load_source(w / "data" / "test.jsonl", grid_size=8, max_images=2)
    recs = [r for r in source.records if r["task"] == "vg"]
    shuffled = diagnose.shuffle_images(recs)
    assert [r["id"] for r in shuffled] == [r["id"] for r in recs]
    for key in ("image", "images"):  # the record's path and the resolved one the loader reads
        assert [r[key] for r in shuffled] == [r[key] for r in recs[1:] + recs[:1]]
    out = diagnose.teacher_forced(model, recs, batch_size=3)
    # the answer's tokens are scored (its text, then <|im_end|>), not the chat template around it
    expected = sum(len(model.tokenizer.encode(r["conversations"][1]["value"])) + 1 for r in recs)
    assert out["tokens"] == expected and out["n"] == len(recs)
    assert out["digit_tokens"] >= 4 * len(recs)  # four coordinates of one or more digits
    for k in ("acc_all", "acc_digit", "acc_other"):
        assert 0.0 <= out[k] <= 1.0
    # the same image for every record: shuffling changes nothing
    same = [{**r, "image": recs[0]["image"], "images": recs[0]["images"]} for r in recs]
    a, b = diagnose.teacher_forced(model, same), diagnose.teacher_forced(model, diagnose.shuffle_images(same))
    assert a == b


def test_diagnose_cli_refuses_an_unknown_task(run):
    proc = subprocess.run([sys.executable, "-m", "rsunivlm_jax.eval.diagnose", "--checkpoint", str(run["workdir"] / "gmoe"),
                           "--data", str(run["workdir"] / "data" / "test.jsonl"), "--tasks", "vg,nope"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [l for l in proc.stderr.strip().splitlines() if "nope" in l]


def test_seed_study_reuses_a_finished_run_and_tabulates_both_models(run, tmp_path):
    from rsunivlm_jax import demo_study
    summary = demo_study.run_study([0], tmp_path / "study", variant="ci", reuse=run["workdir"], progress=False)
    assert summary["runs"] == {0: os.path.relpath(run["workdir"], tmp_path / "study")}
    metrics = _json(run["workdir"] / "metrics.json")
    for task, row in summary["tasks"].items():
        seed0 = row["seeds"][0]
        assert seed0["gmoe"] == metrics["models"]["gmoe"][task]["metrics"][row["metric"]]
        assert seed0["dense"] == metrics["models"]["dense"][task]["metrics"][row["metric"]]
        assert seed0["low"] <= seed0["difference"] <= seed0["high"]
    text = (tmp_path / "study" / "study.md").read_text(encoding="utf-8")
    assert all(f"| {t} |" in text for t in summary["tasks"])


def test_seed_study_verdicts():
    from rsunivlm_jax.demo_study import verdict
    assert verdict([{"low": 0.01, "high": 0.2}, {"low": 0.02, "high": 0.1}]) == "G-MoE better"
    assert verdict([{"low": -0.2, "high": -0.01}] * 3) == "dense better"
    assert verdict([{"low": 0.01, "high": 0.2}, {"low": -0.02, "high": 0.1}]) == "no clear difference"


def test_seed_study_table_marks_runs_without_per_record_results():
    """Evaluation directories written before per-record results were kept have no intervals: the
    table says so instead of failing."""
    from rsunivlm_jax.demo_study import markdown, summarise
    row = {"metric": "accuracy", "n": 10, "gmoe": 0.5, "dense": 0.4, "difference": 0.1, "low": None, "high": None}
    from rsunivlm_jax import tasks
    text = markdown(summarise({0: {t: dict(row) for t in tasks.TASKS_BY_ANSWER}}))
    assert "0.500 / 0.400, +0.100 [no per-record results]" in text
    assert "no clear difference" in text
