"""rsunivlm-predict (box, mask and change answers -> PNG) and rsunivlm-eval end to end on synthetic records."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from rsunivlm_jax import checkpoints, tasks
from rsunivlm_jax.eval import render
from rsunivlm_jax.inference import constrained as C
from rsunivlm_jax.inference import predict as P
from rsunivlm_jax.inference import predict_cli


@pytest.fixture(scope="module")
def checkpoint(real_vocab_tiny, tmp_path_factory):
    cfg, _, params = real_vocab_tiny
    d = tmp_path_factory.mktemp("ckpt") / "model"
    checkpoints.save(d, cfg, params, generation_config={
        "repetition_penalty": 1.05, "eos_token_id": [151645, 151643], "do_sample": True, "temperature": 0.7,
        "top_p": 0.8, "top_k": 20})  # the usual Qwen2-Instruct file; the CLIs decode greedily unless --do-sample
    return d


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for name, size in (("a.png", (80, 64)), ("b.png", (80, 64))):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(d / name)
        paths.append(str(d / name))
    return paths


def test_load_model_reads_generation_config(checkpoint):
    model = P.load_model(checkpoint)
    assert model.sampling.repetition_penalty == 1.05 and model.sampling.do_sample
    assert (model.sampling.temperature, model.sampling.top_k, model.sampling.top_p) == (0.7, 20, 0.8)
    model = P.load_model(checkpoint, do_sample=False)  # what the CLIs pass without --do-sample
    assert model.sampling.repetition_penalty == 1.05 and not model.sampling.do_sample
    assert not model.sampling.penalize_prompt  # LLaVA generate(inputs_embeds=...) semantics
    assert model.eos_ids == (151645, 151643)
    assert model.tokenizer.encode("Hello") == [9707]
    assert P.load_model(checkpoint, repetition_penalty=1.0).sampling.repetition_penalty == 1.0


def _predict(capsys, checkpoint, images, prompt, out, *extra):
    assert predict_cli.main(["--checkpoint", str(checkpoint), *sum((["--image", i] for i in images), []),
                             "--prompt", prompt, "--out", str(out), "--json", *extra]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.is_file() and result["picture"] == str(out)
    inputs = [Image.open(i).convert("RGB") for i in images]
    expected = render.answer_picture(result["task"], inputs, result["answer"], prompt=prompt,
                                     grid_size=int(extra[extra.index("--grid-size") + 1]) if "--grid-size" in extra
                                     else tasks.DEFAULT_GRID_SIZE)
    written = np.asarray(Image.open(out).convert("RGB"))
    x0 = (written.shape[1] - expected.size[0]) // 2  # the answer picture, centred above its caption
    assert written.shape[0] > expected.size[1]
    assert (written[:expected.size[1], x0:x0 + expected.size[0]] == np.asarray(expected)).all()
    return result, expected


def test_predict_box_mask_and_change_pictures(capsys, checkpoint, images, tmp_path):
    # 80x64 inputs are drawn 3x enlarged (short side >= render.MIN_SIDE)
    original = np.asarray(Image.open(images[0]).convert("RGB").resize((240, 192), Image.NEAREST))
    res, pic = _predict(capsys, checkpoint, images[:1], "[VG] where is the red car?", tmp_path / "box.png",
                        "--constrained", "--max-new-tokens", "30")
    assert res["task"] == "vg" and res["granularity"] == 1
    C.parse_boxes_strict(res["answer"])  # a well-formed box answer
    assert pic.size == (240, 192)
    assert (np.asarray(pic) != original).any()  # a box outline was drawn (degenerate boxes too)

    res, pic = _predict(capsys, checkpoint, images[:1], "[SEG] water.", tmp_path / "mask.png",
                        "--constrained", "--grid-size", "8", "--max-new-tokens", "48")
    assert res["task"] == "seg" and res["granularity"] == 2
    grid = tasks.decode_mask_strict(res["answer"], 8)
    assert pic.size == (240, 192)
    changed = (np.asarray(pic) != original).any(axis=-1)
    assert (changed == tasks.grid_to_mask(grid, 192, 240)).all()

    res, pic = _predict(capsys, checkpoint, images, "[SEG] Please segment the building area that have changed "
                        "in the second image.", tmp_path / "change.png", "--constrained", "--grid-size", "8",
                        "--max-new-tokens", "48")
    assert res["task"] == "cd"
    grid = tasks.decode_mask_strict(res["answer"], 8)
    assert set(tasks.mask_labels(res["answer"])) <= {"building"}
    assert pic.size == (3 * 240, 192)  # before | after | change map
    change_map = np.asarray(pic)[:, 480:]
    assert ((change_map[..., 0] > 127) == tasks.grid_to_mask(grid, 192, 240)).all()


def test_prompt_is_checked_against_the_images():
    assert P.prompt_message("[CCD] What changed?", 2) == "<image> <image>\n[CCD] What changed?"
    assert P.prompt_message("<image>\n[VG] the bridge", 1) == "<image>\n[VG] the bridge"
    for prompt, n, text in (("[CCD] What changed?", 1, "[CCD] needs 2 images, got 1"),
                            ("[VG] the bridge", 2, "[VG] needs 1 image, got 2"),
                            ("<image>\n[CAP] Describe.", 2, "1 <image> placeholders for 2 images")):
        with pytest.raises(ValueError, match=re.escape(text)):
            P.prompt_message(prompt, n)
    assert P.check_request("[SEG] roads", 2) == ("<image> <image>\n[SEG] roads", "cd")
    with pytest.raises(ValueError, match="--label 'a,b'"):
        P.check_request("[SEG] water.", 1, constrained=True, label="a,b")
    with pytest.raises(ValueError, match="max_new_tokens 0"):
        P.check_request("[CAP] Describe.", 1, max_new_tokens=0)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from rsunivlm_jax.data import synthetic
    d = tmp_path_factory.mktemp("synthetic")
    return synthetic.write_dataset(str(d), 3, image_size=64, grid_size=8, tasks=("vg", "seg", "cd", "cls"),
                                   progress=False)


def _check_vg_outputs(out, n, devices):
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["results"]["vg"]["n"] == n
    assert metrics["results"]["vg"]["metrics"]["parse_failure_rate"] == 0.0
    assert "centre_box" in metrics["baselines"]["vg"]
    assert metrics["meta"]["decoding"]["devices"] == devices
    assert "| vg | acc@0.5 |" in (out / "report.md").read_text()
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == n and all(C.parse_boxes_strict(p["answer"]) for p in preds)
    assert (out / "examples.png").is_file() and len(list((out / "examples").glob("*.png"))) == n


def test_eval_cli_end_to_end(checkpoint, synthetic, tmp_path, capsys):
    from rsunivlm_jax.eval import cli
    out = tmp_path / "vg"
    # one device, batch 1: the same compiled program as the [VG] prediction above
    assert cli.main(["--checkpoint", str(checkpoint), "--task", "vg", "--data", synthetic, "--out", str(out),
                     "--constrained", "--max-new-tokens", "30", "--grid-size", "8", "--batch-size", "1",
                     "--devices", "1", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["n"] == 3 and printed["metrics"]["parse_failure_rate"] == 0.0
    _check_vg_outputs(out, 3, 1)


@pytest.mark.slow
def test_eval_cli_sharded_over_devices(checkpoint, synthetic, tmp_path):
    import jax
    from rsunivlm_jax.eval import cli
    out = tmp_path / "vg"
    assert cli.main(["--checkpoint", str(checkpoint), "--task", "vg", "--data", synthetic, "--out", str(out),
                     "--constrained", "--max-new-tokens", "30", "--grid-size", "8", "--batch-size", "2",
                     "--no-progress"]) == 0
    _check_vg_outputs(out, 3, jax.device_count())


def test_evaluate_in_process_masks(checkpoint, synthetic, tmp_path):
    from rsunivlm_jax.data.records import load_source
    from rsunivlm_jax.eval.evaluate import EvalOptions, evaluate
    model = P.load_model(checkpoint, do_sample=False)  # as the CLIs without --do-sample
    source = load_source(synthetic, grid_size=8)
    # batch 1 and the checkpoint's decoding settings: the same compiled program as the change prediction
    options = EvalOptions(batch_size=1, constrained=True, grid_size=8, max_new_tokens=48, num_examples=2)
    ev = evaluate(model, source, source.root, "cd", options, out_dir=tmp_path, progress=False)
    res = ev["result"]
    assert res["n"] == 3 and res["metrics"]["parse_failure_rate"] == 0.0
    assert set(res["metrics"]) >= {"precision", "recall", "f1", "iou"}
    assert all(tasks.decode_mask_strict(p["answer"], 8) is not None for p in ev["predictions"])
    assert (tmp_path / "metrics.json").is_file() and len(list((tmp_path / "examples").glob("*.png"))) == 2
    written = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [p["answer"] for p in written] == [p["answer"] for p in ev["predictions"]]
    assert not list(tmp_path.glob(".*.tmp"))  # every file renamed into place
