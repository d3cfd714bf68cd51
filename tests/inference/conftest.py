"""Shared fixtures: the real Qwen2 tokenizer and tiny random models.

Parameters are drawn with numpy in the layout of `rs.abstract_init` (normal(0, 0.02) like the
model's initialisers; norm scales 1, norm biases 0): compiling the jitted initialiser would
cost several seconds per configuration.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsunivlm_jax as rs

QWEN_VOCAB_ROWS = 151936


def real_vocab_tiny_config():
    """The tiny preset (64x64 images, width 64) with Qwen2's vocabulary and special ids."""
    return rs.presets.get("tiny").replace(
        decoder={"vocab_size": QWEN_VOCAB_ROWS}, image_token_id=151646, pad_token_id=151643,
        eos_token_ids=(151645, 151643), tokenizer_vocab_size=151647)


def numpy_init(cfg, seed=0):
    """(graphdef, params) with random weights from numpy."""
    graphdef, abstract = rs.abstract_init(cfg)
    rng = np.random.default_rng(seed)

    def draw(path, a):
        keys = [str(getattr(k, "key", k)) for k in path]
        norm = any("norm" in k for k in keys)
        if norm and keys[-1] == "scale":
            return jnp.ones(a.shape, a.dtype)
        if norm and keys[-1] == "bias":
            return jnp.zeros(a.shape, a.dtype)
        return jnp.asarray(rng.normal(0, 0.02, a.shape).astype(a.dtype))

    return graphdef, jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.fixture(scope="session")
def qwen_tokenizer():
    # The tokenizer files are a core dependency: a broken install fails here instead of skipping.
    from rsunivlm_jax.data.tokenizer import load_default_tokenizer
    return load_default_tokenizer()


@pytest.fixture(scope="session")
def real_vocab_tiny():
    """(config, graphdef, params) of `real_vocab_tiny_config`."""
    cfg = real_vocab_tiny_config()
    return (cfg,) + numpy_init(cfg)


@pytest.fixture(scope="session")
def tiny():
    """(config, graphdef, params) of the tiny preset."""
    cfg = rs.presets.get("tiny")
    return (cfg,) + numpy_init(cfg, 1)
