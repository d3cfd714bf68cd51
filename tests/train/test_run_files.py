"""A training run directory is self-contained and safe to re-run.

* The documented tiny recipe (`configs/tiny_cpu.py`, compact vocabulary) trained for two steps
  loads in `rsunivlm-eval` and `rsunivlm-predict` (the run holds its tokenizer).
* The compact-vocabulary tokenizer read back from a run gives the ids training used.
* A refused re-run (different model) leaves `config.json` untouched; a torn last line in
  `metrics.jsonl` (a run killed mid-append) is dropped with a warning on resume.
"""
import json
import logging
import shutil

import numpy as np
import pytest

from tests.config_files import load as load_config
from rsunivlm_jax.data import tokenizer as tok_lib
from rsunivlm_jax.train import data as data_lib, metrics as metrics_lib, trainer as trainer_lib

OVERRIDES = {"train.steps": 2, "train.global_batch": 2, "train.log_every": 1, "train.progress": False,
             "data.synthetic.num": 12, "data.synthetic.eval_num": 4, "ckpt.every": 2, "eval.every": 0,
             "data.num_workers": 0}


def _argv():
    return [f"--config.{k}={v}" for k, v in OVERRIDES.items()]


def _config(**extra):
    c = load_config("tiny_cpu.py")
    for key, value in {**OVERRIDES, **extra}.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from rsunivlm_jax.train import cli
    d = tmp_path_factory.mktemp("tiny") / "run"
    assert cli.main(["--config", "configs/tiny_cpu.py", "--workdir", str(d), *_argv()]) == 0
    return d


def test_compact_run_tokenizer_gives_the_training_ids(tmp_path):
    model = trainer_lib.model_config_from(load_config("tiny_cpu.py").model)
    full = tok_lib.load_default_tokenizer()
    conv = [{"from": "human", "value": "<image>\n[CLS] Which class? harbor, forest."},
            {"from": "gpt", "value": "harbor"}]
    used = full.encode_conversation(conv).input_ids.tolist() + full.encode(data_lib.EXTRA_TEXT)
    vocab = data_lib.CompactVocab.build(used, model=model, pad_id=full.pad_id, eos_id=full.eos_id,
                                        image_id=full.image_token_id)
    vocab.save(str(tmp_path / data_lib.VOCAB_FILE))
    full.save(tmp_path)
    compact = tok_lib.Tokenizer.from_dir(tmp_path, image_token_id=model.image_token_id)
    want = vocab.to_compact(full.encode_conversation(conv).input_ids)
    got = compact.encode_conversation(conv)
    assert got.input_ids.tolist() == want.tolist()
    assert got.targets.tolist() == full.encode_conversation(conv).targets.tolist()
    assert (compact.pad_id, compact.eos_id) == (model.pad_token_id, model.eos_token_ids[0])
    assert compact.vocab_size == model.decoder.vocab_size
    assert compact.decode(got.input_ids) == full.decode(full.encode_conversation(conv).input_ids)
    unseen = compact.encode("zebra crossing")  # words the table never saw -> the UNK row, dropped on decode
    assert set(unseen) == {vocab.unk_id} and compact.decode(unseen) == ""


def test_tiny_recipe_run_loads_in_eval_and_predict(run, tmp_path, capsys):
    from rsunivlm_jax.eval import cli as eval_cli
    from rsunivlm_jax.inference import predict_cli

    assert (run / "tokenizer.json").is_file() and (run / data_lib.VOCAB_FILE).is_file()
    data = run / "data" / "synthetic"
    assert eval_cli.main(["--checkpoint", str(run), "--task", "cls", "--data", str(data), "--split", "val",
                          "--limit", "2", "--out", str(tmp_path / "eval"), "--batch-size", "2",
                          "--max-new-tokens", "3", "--devices", "1", "--no-progress", "--examples", "0"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["task"] == "cls" and printed["n"] >= 1 and "accuracy" in printed["metrics"]
    record = next(json.loads(line) for line in open(data / "val.jsonl") if '"cls"' in line)
    image = data / record["image"]
    assert predict_cli.main(["--checkpoint", str(run), "--image", str(image), "--prompt",
                             record["conversations"][0]["value"].split("\n", 1)[1], "--out",
                             str(tmp_path / "p.png"), "--max-new-tokens", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["task"] == "cls" and isinstance(result["answer"], str) and (tmp_path / "p.png").is_file()


def test_refused_rerun_leaves_the_run_config_untouched(run):
    before = (run / "config.json").read_bytes()
    with pytest.raises(ValueError, match="differs"):
        trainer_lib.train(_config(**{"model.num_experts": 3}), str(run))
    assert (run / "config.json").read_bytes() == before


def test_resume_drops_a_torn_metrics_line(run, tmp_path, caplog):
    d = tmp_path / "run"
    shutil.copytree(run, d)
    rows = metrics_lib.read_jsonl(str(d / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]
    with open(d / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 3, "split": "train", "lo')  # killed mid-append
    with caplog.at_level(logging.WARNING):
        summary = trainer_lib.train(_config(**{"train.steps": 3}), str(d))
    assert summary.status == "completed" and summary.step == 3
    assert "torn last line" in caplog.text
    rows = metrics_lib.read_jsonl(str(d / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3] and np.isfinite(rows[-1]["loss"])
