"""Training inputs: the compact vocabulary for tiny models and the random contract batches."""
import numpy as np

import rsunivlm_jax as rs
from rsunivlm_jax.train.data import CompactVocab, RandomBatches, RemapTokens


def test_compact_vocab_maps_reserved_ids_and_round_trips(tmp_path):
    model = rs.presets.get("tiny")  # 512 rows, pad 0, eos 1, image 511
    pad, eos, image = 151643, 151645, 151646
    used = [198, 151644, 17, 9, 100000, pad, eos, image]
    v = CompactVocab.build(used, model=model, pad_id=pad, eos_id=eos, image_id=image)
    ids = np.array([[151644, 17, image, 198, 9, 100000, eos, pad, 5]])
    small = v.to_compact(ids)
    assert small[0, 2] == model.image_token_id and small[0, 6] == 1 and small[0, 7] == 0
    assert small[0, -1] == v.unk_id and small.max() < model.decoder.vocab_size
    assert len(set(small[0, :6].tolist())) == 6  # distinct ids stay distinct
    np.testing.assert_array_equal(v.to_full(small)[0, :8], ids[0, :8])
    assert v.to_full(np.array([v.unk_id]))[0] == -1
    v.save(str(tmp_path / "vocab.json"))
    w = CompactVocab.load(str(tmp_path / "vocab.json"))
    np.testing.assert_array_equal(w.to_compact(ids), small)
    out = RemapTokens(w).map({"input_ids": ids, "granularity": np.array([2])})
    np.testing.assert_array_equal(out["input_ids"], small)


def test_compact_vocab_too_small_is_a_clear_error():
    model = rs.presets.get("tiny")
    try:
        CompactVocab.build(range(1000, 2000), model=model, pad_id=1, eos_id=2, image_id=3)
    except ValueError as e:
        assert "512 rows" in str(e) and "compact_vocab" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_random_batches_follow_the_contract_and_split_by_process():
    model = rs.presets.get("tiny")
    full = RandomBatches(model, global_batch=4, text_len=16, process_index=0, process_count=1).batch(3)
    halves = [RandomBatches(model, global_batch=4, text_len=16, process_index=i, process_count=2).batch(3)
              for i in range(2)]
    for k, v in full.items():
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), v)
    assert full["input_ids"].dtype == np.int32 and full["loss_mask"].dtype == np.float32
    assert (full["input_ids"] == model.image_token_id).sum(1).tolist() == [1, 1, 1, 1]
    assert np.all(full["loss_mask"][:, 0] == 0) and np.all(full["granularity"] == 0)  # batch 3 -> 3 % 3
    it = iter(RandomBatches(model, global_batch=4, text_len=16, process_index=0, process_count=1))
    next(it)
    state = it.get_state()
    a = next(it)
    it.set_state(state)
    np.testing.assert_array_equal(next(it)["input_ids"], a["input_ids"])


def test_loss_weighting_per_example():
    """token: unchanged; sample: each example's targets sum to 1; sqrt: to sqrt(#targets). Column 0
    is never a target, so it does not count."""
    from rsunivlm_jax.train.loss import weight_loss_mask
    mask = np.array([[1, 1, 1, 1, 1], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]], np.float32)  # 4, 1 and 0 targets
    assert np.array_equal(weight_loss_mask(mask, "token"), mask)
    sample = weight_loss_mask(mask, "sample")
    assert np.allclose(sample[0], 0.25) and np.allclose(sample[1], [0, 1, 0, 0, 0]) and not sample[2].any()
    assert np.allclose(weight_loss_mask(mask, "sqrt")[0], 0.5)      # 4 targets: each 1/2, sum 2 = sqrt(4)
    import pytest
    with pytest.raises(ValueError, match="loss weighting"):
        weight_loss_mask(mask, "mean")


def test_build_inputs_task_mixture_and_loss_weighting_from_the_config(tmp_path):
    """The trainer's inputs follow `data.task_weights` / `data.granularity_text_len` (one shape per
    granularity) and `train.loss_weighting` ("sample": every example's targets sum to 1)."""
    from rsunivlm_jax.train import config_lib
    from rsunivlm_jax.train.data import build_inputs
    from tests.data.helpers import small_dataset

    c = config_lib.base_config()
    c.model.preset = "tiny"
    c.data.train = small_dataset(tmp_path / "data", n=16, size=32) + "/train.jsonl"
    c.data.compact_vocab = True
    c.data.max_images = 2
    c.data.task_weights = {"cap": 1.0, "vg": 1.0, "seg": 1.0}
    c.data.granularity_text_len = (64, 72, 200)
    c.train.global_batch = 4
    c.train.loss_weighting = "sample"
    model = rs.presets.get("tiny")
    it = iter(build_inputs(c, model, str(tmp_path / "run")).train)
    seen = set()
    for _ in range(12):
        b = next(it)
        (g,) = set(b["granularity"].tolist())
        seen.add(g)
        assert b["input_ids"].shape == (4, c.data.granularity_text_len[g])
        assert np.allclose(b["loss_mask"][:, 1:].sum(1), 1.0)
    assert seen == {0, 1, 2}
