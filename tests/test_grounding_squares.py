"""End to end on the easiest mask set: the main job's model, trained by the library's trainer on
`[SEG] red.` over cell-aligned red and blue squares (`tools/grounding_squares.py --task seg`), must
answer row-RLE masks read from the image. This is the whole image -> connector -> decoder -> mask
text path learning from pixels; with the images shuffled the same model must fail."""
from tools import grounding_squares


def test_the_main_job_model_learns_masks_from_the_image(tmp_path):
    out = grounding_squares.run(tmp_path, task="seg", steps=600, num_train=3000, num_eval=100)
    real, shuffled = out["real"], out["shuffled"]
    assert real["miou"] >= 0.9 and real["giou"] >= 0.9, out
    assert shuffled["giou"] <= 0.2, out
    assert real["giou"] - shuffled["giou"] >= 0.6, out


def _first_logged_loss(run_dir):
    import json
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return next(r["loss"] for r in rows if r.get("split") == "train")


def test_init_continues_from_an_earlier_runs_weights_and_tokenizer(tmp_path, capsys):
    """`--task cd_pasted` then `--task cd_scenes --init <first>/run`: the second run uses the first
    run's tokenizer and starts from its weights (its first loss is far below the first run's, which
    started from random weights); a directory that is not a run is refused with one line, status 2."""
    import pytest

    log = ["train.log_every=1"]
    first = grounding_squares.run(tmp_path / "pasted", task="cd_pasted", steps=40, num_train=24, num_eval=3,
                                  overrides=log)
    assert first["init"] is None and set(first["real"]) == {"f1", "iou"}
    init = tmp_path / "pasted" / "run"
    second = grounding_squares.run(tmp_path / "ft", task="cd_scenes", steps=1, num_train=6, num_eval=3,
                                   overrides=log, init=str(init))
    assert second["init"] == str(init)
    assert (tmp_path / "ft" / "run" / "tokenizer.json").read_bytes() == (init / "tokenizer.json").read_bytes()
    assert _first_logged_loss(tmp_path / "ft" / "run") < 0.6 * _first_logged_loss(init)

    with pytest.raises(SystemExit) as exit_info:
        grounding_squares.main(["--workdir", str(tmp_path / "x"), "--task", "cd_scenes", "--init", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "--init" in err[-1] and "no tokenizer.json" in err[-1]
