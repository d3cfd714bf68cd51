"""Streamed decoding gives `generate`'s tokens, one at a time: greedy with a mask grammar on one image,
sampled with a repetition penalty on two (plain greedy: tests/app/test_client.py against rsunivlm-predict)."""
import pytest

from rsunivlm_jax import tasks
from rsunivlm_jax.app import stream
from rsunivlm_jax.data import preprocess
from rsunivlm_jax.inference import constrained as C
from rsunivlm_jax.inference.generate import generate
from rsunivlm_jax.inference.predict import load_model
from rsunivlm_jax.inference.sampling import SamplingParams
from rsunivlm_jax.router import route


@pytest.fixture(scope="module")
def model(app_checkpoint):
    return load_model(app_checkpoint, do_sample=False)


@pytest.fixture(scope="module")
def pixels(app_images, model):
    imgs = [preprocess.open_image(app_images[k]) for k in ("before", "after")]
    return {n: preprocess.preprocess_images(imgs[:n], model.config.vision.image_size, n) for n in (1, 2)}


CASES = [
    ("<image>\n[SEG] water.", 1, True, SamplingParams(penalize_prompt=False), 20),
    ("<image> <image>\n[CCD] Please briefly describe the changes in these two images.", 2, False,
     SamplingParams(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.2,
                    penalize_prompt=False), 20),
]


@pytest.mark.parametrize("message,n,constrained,sp,budget", CASES, ids=["greedy-constrained-seg", "sampled-2img"])
def test_stream_matches_generate(model, pixels, message, n, constrained, sp, budget):
    enc = model.tokenizer.encode_conversation([{"from": "human", "value": message}], add_generation_prompt=True)
    con = C.for_prompts(model.tokenizer, model.config.decoder.vocab_size, [message], grid_size=4,
                        eos_ids=model.eos_ids) if constrained else None
    g = route(message)
    ref = generate(model.graphdef, model.params, enc.input_ids[None], None, pixels[n][None], [g],
                   max_new_tokens=budget, eos_ids=model.eos_ids, sampling_params=sp, rng=5, constraint=con,
                   config=model.config)
    expected = ref.tokens[0, :ref.lengths[0]].tolist()
    it = stream.stream_tokens(model.graphdef, model.params, model.config, enc.input_ids, pixels[n], g,
                              max_new_tokens=budget, eos_ids=model.eos_ids, sampling_params=sp, rng=5,
                              constraint=con)
    first = next(it)  # a token arrives before the rest are generated
    got = [first] + list(it)
    assert got == expected
    if constrained:  # a complete 4 x 4 mask
        assert got[-1] in model.eos_ids
        assert tasks.decode_mask_strict(model.tokenizer.decode(got[:-1]), 4).shape == (4, 4)


def test_constrained_budget_too_small_is_refused(model, pixels):
    message = "<image>\n[SEG] water."
    enc = model.tokenizer.encode_conversation([{"from": "human", "value": message}], add_generation_prompt=True)
    con = C.for_prompts(model.tokenizer, model.config.decoder.vocab_size, [message], grid_size=4,
                        eos_ids=model.eos_ids)
    with pytest.raises(ValueError, match="cannot hold a complete constrained answer"):
        next(stream.stream_tokens(model.graphdef, model.params, model.config, enc.input_ids, pixels[1], 2,
                                  max_new_tokens=5, eos_ids=model.eos_ids, constraint=con))
