"""bench/train_compare.py runs its JAX and transformers blocks end to end on the tiny preset."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_compare_tiny(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.train_compare", "--preset", "tiny", "--seq_len", "96",
                           "--steps", "1", "--results_dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "train_compare_tiny.json").read_text())
    assert r["jax_remat_variants"] == ["full", "dots"]
    for side in ("jax_full", "jax_dots", "torch"):
        assert len(r[side]["step_times_s"]) == 1 and r[side]["step_time_s"] > 0
        assert 0 < r[side]["mfu"] < 1.5
    assert r["jax"] == r["jax_full"]
    assert r["speedup_jax_over_torch"] == pytest.approx(r["torch"]["step_time_s"] / r["jax_full"]["step_time_s"])


def test_transformers_model_has_our_parameter_count():
    """The transformers side trains exactly as many parameters as ours (built on the meta device)."""
    import torch
    import rsunivlm_jax as rs
    from bench.forward import torch_model
    cfg = rs.presets.get("llava-onevision-0.5b")
    with torch.device("meta"):
        model = torch_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == rs.param_count(cfg) == 893_618_208


def test_expanded_batch_matches_our_layout():
    """One placeholder becomes the image's positions; the kept positions are our `text_end`."""
    import numpy as np
    import rsunivlm_jax as rs
    from bench.train_torch import expand_batch
    from rsunivlm_jax.train import data as data_lib
    cfg = rs.presets.get("tiny")
    batch = data_lib.RandomBatches(cfg, global_batch=1, text_len=40, num_images=1, process_index=0,
                                   process_count=1).batch(0)
    b = expand_batch(batch, cfg)
    ids = batch["input_ids"][0]
    assert b["input_ids"].shape == (1, 40 + cfg.tokens_per_image - 1)
    assert int((b["input_ids"] == cfg.image_token_id).sum()) == cfg.tokens_per_image
    # Text tokens sit at the kept positions, the image placeholder's kept position ends its block.
    text = ids != cfg.image_token_id
    np.testing.assert_array_equal(b["input_ids"][0, b["keep"][text]], ids[text])
    assert b["keep"][1] == 1 + cfg.tokens_per_image - 1
    np.testing.assert_array_equal(b["targets"], ids[1:])
    np.testing.assert_array_equal(b["weights"], batch["loss_mask"][0, 1:])
    assert b["attention_mask"].sum() == batch["attention_mask"].sum() + cfg.tokens_per_image - 1
