"""Inference: jitted KV-cache generation, logits processors, constrained decoding, the predict CLI.

    import rsunivlm_jax as rs
    out = rs.generate(graphdef, params, input_ids, attention_mask, pixel_values, granularity,
                      max_new_tokens=64, repetition_penalty=1.1)

Submodules: `generate` (prefill + while_loop decode; `generate.generate` is the function),
`sampling` (transformers-order processors, generation_config.json), `constrained` ([VG] box /
[SEG] mask grammars), `predict` (a loaded model and one answer), `predict_cli` (`rsunivlm-predict`).
The submodule names are not shadowed here, so ``from rsunivlm_jax.inference import generate`` is the
module.
"""
from rsunivlm_jax.inference.generate import GenerateOutput, answer_ids, decode_answers, default_max_new_tokens
from rsunivlm_jax.inference.sampling import SamplingParams, load_generation_config

__all__ = ["GenerateOutput", "SamplingParams", "answer_ids", "decode_answers", "default_max_new_tokens",
           "load_generation_config"]
