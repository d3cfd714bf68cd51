"""Logits processors against transformers' own processors; generation_config.json reading."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsunivlm_jax.inference import sampling as S


@pytest.fixture(scope="module")
def lp():
    from transformers.generation import logits_process
    return logits_process


def _logits(b=4, v=300, seed=0):
    return np.random.default_rng(seed).normal(0, 3, (b, v)).astype(np.float32)


def _t(x):
    import torch
    return torch.from_numpy(np.ascontiguousarray(x))


def _same_mask_and_values(ours, ref):
    ours, ref = np.asarray(ours), ref.numpy()
    assert (np.isneginf(ours) == np.isneginf(ref)).all()
    finite = np.isfinite(ref)
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-6, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("penalty", [0.7, 1.3])
def test_repetition_penalty_matches_transformers(lp, penalty):
    x = _logits()
    seen = np.random.default_rng(1).integers(0, x.shape[1], (x.shape[0], 12))
    presence = np.zeros(x.shape, bool)
    np.put_along_axis(presence, seen, True, axis=1)
    ref = lp.RepetitionPenaltyLogitsProcessor(penalty)(_t(seen), _t(x.copy()))
    _same_mask_and_values(S.repetition_penalty(jnp.asarray(x), jnp.asarray(presence), penalty), ref)


@pytest.mark.torch
def test_temperature_top_k_top_p_match_transformers(lp):
    x = _logits(seed=2)
    ids = _t(np.zeros((x.shape[0], 1), np.int64))
    for k in (1, 5, 50):
        ref = lp.TopKLogitsWarper(k)(ids, _t(x.copy()))
        _same_mask_and_values(S.top_k(jnp.asarray(x), k), ref)
    for p in (0.05, 0.5, 0.9, 0.999):
        ref = lp.TopPLogitsWarper(p)(ids, _t(x.copy()))
        _same_mask_and_values(S.top_p(jnp.asarray(x), p), ref)
    ref = lp.TemperatureLogitsWarper(0.7)(ids, _t(x.copy()))
    _same_mask_and_values(S.temperature(jnp.asarray(x), 0.7), ref)


@pytest.mark.torch
def test_processing_chain_in_transformers_order(lp):
    x = _logits(seed=3)
    seen = np.random.default_rng(4).integers(0, x.shape[1], (x.shape[0], 20))
    presence = np.zeros(x.shape, bool)
    np.put_along_axis(presence, seen, True, axis=1)
    chain = lp.LogitsProcessorList([lp.RepetitionPenaltyLogitsProcessor(1.1), lp.TemperatureLogitsWarper(0.7),
                                    lp.TopKLogitsWarper(20), lp.TopPLogitsWarper(0.8)])
    ref = chain(_t(seen), _t(x.copy()))
    params = S.SamplingParams(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.1)
    _same_mask_and_values(S.process(jnp.asarray(x), jnp.asarray(presence), params), ref)
    greedy = S.process(jnp.asarray(x), jnp.asarray(presence), params.replace(do_sample=False))
    assert np.isfinite(np.asarray(greedy)).all()  # greedy: only the penalty applies


def test_argmax_is_first_maximum():
    x = _logits(b=3, v=1000, seed=5)
    x[1, [17, 700]] = 100.0  # tie: the first index wins, as torch.argmax / jnp.argmax
    x[2, -1] = 100.0  # in the padded last chunk
    assert np.asarray(S.argmax(jnp.asarray(x))).tolist() == np.argmax(x, axis=1).tolist()


def test_categorical_follows_the_distribution_and_never_picks_masked_tokens():
    logits = np.full((1, 600), -np.inf, np.float32)
    logits[0, [3, 300, 599]] = np.log([0.2, 0.3, 0.5])
    draws = jax.vmap(lambda k: S.categorical(k, jnp.asarray(logits))[0])(jax.random.split(jax.random.key(0), 4000))
    counts = np.bincount(np.asarray(draws), minlength=600)
    assert counts.sum() == counts[[3, 300, 599]].sum()
    np.testing.assert_allclose(counts[[3, 300, 599]] / 4000, [0.2, 0.3, 0.5], atol=0.03)


def test_top_k_1_sampling_is_greedy():
    x = jnp.asarray(_logits(b=8, v=2000, seed=6))
    params = S.SamplingParams(do_sample=True, top_k=1)
    for seed in range(3):
        draws = S.choose(S.process(x, None, params), params, jax.random.key(seed))
        assert (np.asarray(draws) == np.argmax(np.asarray(x), axis=1)).all()


def test_mask_vocab():
    out = np.asarray(S.mask_vocab(jnp.zeros((2, 10)), 7))
    assert np.isneginf(out[:, 7:]).all() and (out[:, :7] == 0).all()


def test_generation_config(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"repetition_penalty": 1.1, "top_p": 0.8, "top_k": 20, "temperature": 0.7,
         "eos_token_id": [151645, 151643], "pad_token_id": 151643, "do_sample": True}))
    sp, extras = S.load_generation_config(tmp_path)
    assert sp == S.SamplingParams(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.1)
    assert extras == {"eos_token_ids": (151645, 151643), "pad_token_id": 151643}
    greedy, _ = S.load_generation_config(tmp_path, do_sample=False)
    assert not greedy.do_sample and greedy.repetition_penalty == 1.1  # greedy still honours the penalty
    default, extras = S.load_generation_config(tmp_path / "missing")
    assert default == S.SamplingParams() and extras == {}
    (tmp_path / "generation_config.json").write_text("{")
    with pytest.raises(ValueError, match="generation_config.json"):
        S.load_generation_config(tmp_path)
