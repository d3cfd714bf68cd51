"""rsunivlm-predict (box, mask and change answers -> PNG) and rsunivlm-eval end to end on synthetic records."""
import json

import numpy as np
import pytest
from PIL import Image

from rsunivlm_jax import tasks
from rsunivlm_jax.inference import constrained as C
from rsunivlm_jax.inference import predict_cli


@pytest.fixture(scope="module")
def checkpoint(real_vocab_tiny, tmp_path_factory):
    cfg, _, params = real_vocab_tiny
    d = tmp_path_factory.mktemp("ckpt") / "model"
    predict_cli.save_checkpoint(d, cfg, params, generation_config={
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
    model = predict_cli.load_model(checkpoint)
    assert model.sampling.repetition_penalty == 1.05 and model.sampling.do_sample
    assert (model.sampling.temperature, model.sampling.top_k, model.sampling.top_p) == (0.7, 20, 0.8)
    model = predict_cli.load_model(checkpoint, do_sample=False)  # what the CLIs pass without --do-sample
    assert model.sampling.repetition_penalty == 1.05 and not model.sampling.do_sample
    assert not model.sampling.penalize_prompt  # LLaVA generate(inputs_embeds=...) semantics
    assert model.eos_ids == (151645, 151643)
    assert model.tokenizer.encode("Hello") == [9707]
    assert predict_cli.load_model(checkpoint, repetition_penalty=1.0).sampling.repetition_penalty == 1.0


def _predict(capsys, checkpoint, images, prompt, out, *extra):
    assert predict_cli.main(["--checkpoint", str(checkpoint), *sum((["--image", i] for i in images), []),
                             "--prompt", prompt, "--out", str(out), "--json", *extra]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.is_file() and result["picture"] == str(out)
    return result, Image.open(out)


def test_predict_box_mask_and_change_pictures(capsys, checkpoint, images, tmp_path):
    original = np.asarray(Image.open(images[0]).convert("RGB"))
    res, pic = _predict(capsys, checkpoint, images[:1], "[VG] where is the red car?", tmp_path / "box.png",
                        "--constrained", "--max-new-tokens", "30")
    assert res["task"] == "vg" and res["granularity"] == 1
    boxes = C.parse_boxes_strict(res["answer"])
    assert pic.size == (80, 64)
    if any(b[2] > b[0] and b[3] > b[1] for b in boxes):
        assert (np.asarray(pic) != original).any()  # a box outline was drawn

    res, pic = _predict(capsys, checkpoint, images[:1], "[SEG] water.", tmp_path / "mask.png",
                        "--constrained", "--grid-size", "8", "--max-new-tokens", "48")
    assert res["task"] == "seg" and res["granularity"] == 2
    grid = tasks.decode_mask_strict(res["answer"], 8)
    assert pic.size == (80, 64)
    assert ((np.asarray(pic) != original).any(axis=-1).any()) == bool(grid.any())

    res, pic = _predict(capsys, checkpoint, images, "[SEG] Please segment the building area that have changed "
                        "in the second image.", tmp_path / "change.png", "--constrained", "--grid-size", "8",
                        "--max-new-tokens", "48")
    assert res["task"] == "cd"
    grid = tasks.decode_mask_strict(res["answer"], 8)
    assert set(tasks.mask_labels(res["answer"])) <= {"building"}
    assert pic.size == (3 * 80, 64)  # before | after | change map
    change_map = np.asarray(pic)[:, 160:]
    expected = tasks.grid_to_mask(grid, 64, 80)
    assert ((change_map[..., 0] > 127) == expected).all()


def test_predict_rejects_bad_inputs(checkpoint, images, tmp_path):
    with pytest.raises(SystemExit):
        predict_cli.main(["--checkpoint", str(checkpoint), "--image", str(tmp_path / "missing.png"),
                          "--prompt", "[CAP] Describe."])
    with pytest.raises(FileNotFoundError):
        predict_cli.load_model(tmp_path / "nope")


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
    from rsunivlm_jax.eval.cli import evaluate
    model = predict_cli.load_model(checkpoint, do_sample=False)  # as the CLIs without --do-sample
    source = load_source(synthetic, grid_size=8)
    # batch 1 and the checkpoint's decoding settings: the same compiled program as the change prediction
    ev = evaluate(model.graphdef, model.params, model.config, model.tokenizer, source, source.root, "cd",
                  batch_size=1, constrained=True, grid_size=8, max_new_tokens=48, sampling_params=model.sampling,
                  eos_ids=model.eos_ids, out_dir=tmp_path, num_examples=2, progress=False)
    res = ev["result"]
    assert res["n"] == 3 and res["metrics"]["parse_failure_rate"] == 0.0
    assert set(res["metrics"]) >= {"precision", "recall", "f1", "iou"}
    assert all(tasks.decode_mask_strict(p["answer"], 8) is not None for p in ev["predictions"])
    assert (tmp_path / "metrics.json").is_file() and len(list((tmp_path / "examples").glob("*.png"))) == 2
