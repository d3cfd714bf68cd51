"""Model invariants: parameter counts, routing, expert dispatch and gradients, padding, splicing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsunivlm_jax as rs


@pytest.fixture(autouse=True)
def _highest():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def tiny():
    cfg = rs.presets.get("tiny")
    graphdef, params = rs.init(cfg, 0)
    return cfg, graphdef, params


def test_param_counts_of_presets():
    assert rs.param_count(rs.presets.get("rsunivlm-1b")) == 1_657_325_600
    assert rs.param_count(rs.presets.get("llava-onevision-0.5b")) == 893_618_208
    assert rs.param_count(rs.presets.get("tiny")) < 1_000_000


def test_unknown_preset_names_known_ones():
    with pytest.raises(KeyError, match="rsunivlm-1b"):
        rs.presets.get("nope")


@pytest.mark.parametrize("prompt,expected", [
    ("<image>\n[SEG] water.", 2), ("[VG] where is the bridge?", 1), ("[REF] what is [1, 2, 3, 4]?", 1),
    ("[CAP] Describe.", 0), ("[VQA] [SEG] both", 2), ("[REF] and [VG]", 1), ("no tag", 0), ("[seg] lower", 0),
])
def test_router_rule(prompt, expected):
    assert rs.route(prompt) == expected


def _batch(cfg, b=2, t=12, n=1, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, cfg.decoder.vocab_size - 2, (b, t)).astype(np.int32)
    ids[:, 3] = cfg.image_token_id
    px = rng.uniform(-1, 1, (b, n, cfg.vision.image_size, cfg.vision.image_size, 3)).astype(np.float32)
    return jnp.asarray(ids), jnp.asarray(px)


def _with_identical_experts(params):
    mlp = params["decoder"]["layers"]["mlp"]
    params = jax.tree.map(lambda x: x, params)
    for name in mlp:
        k = mlp[name]["kernel"]
        params["decoder"]["layers"]["mlp"][name]["kernel"] = jnp.broadcast_to(k[:, :1], k.shape)
    return params


@pytest.mark.parametrize("dispatch", ["auto", "dense_mask"])
def test_identical_experts_give_same_logits_for_every_granularity(tiny, dispatch):
    cfg, _, params = tiny
    cfg = cfg.replace(gmoe_dispatch=dispatch)
    graphdef, _ = rs.abstract_init(cfg)
    params = _with_identical_experts(params)
    ids, px = _batch(cfg)
    outs = [rs.forward(graphdef, params, ids, px, jnp.full((2,), g, jnp.int32)) for g in range(3)]
    for o in outs[1:]:
        np.testing.assert_allclose(np.asarray(o), np.asarray(outs[0]), atol=1e-6, rtol=0)


def _expert_grads(cfg, params, granularity):
    graphdef, _ = rs.abstract_init(cfg)
    ids, px = _batch(cfg, b=len(granularity))

    def loss(p):
        return jnp.sum(rs.forward(graphdef, p, ids, px, jnp.asarray(granularity, jnp.int32), output="text") ** 2)

    grads = jax.grad(loss)(params)["decoder"]["layers"]["mlp"]
    return {name: np.asarray(g["kernel"]) for name, g in grads.items()}  # [L, E, ...]


@pytest.mark.parametrize("dispatch,granularity,used", [
    ("auto", [1, 1], {1}), ("auto", [2, 0], {0, 2}), ("dense_mask", [2, 0], {0, 2}), ("dense_mask", [1, 1], {1}),
    ("ragged", [0, 2], {0, 2}), ("gather", [2, 2], {2}),
])
def test_only_selected_experts_receive_gradient(tiny, dispatch, granularity, used):
    cfg, _, params = tiny
    cfg = cfg.replace(gmoe_dispatch=dispatch)
    for name, g in _expert_grads(cfg, params, granularity).items():
        for e in range(3):
            norm = np.abs(g[:, e]).max()
            assert (norm > 0) == (e in used), (name, e, norm)


def test_left_padding_matches_unpadded_row(tiny):
    cfg, graphdef, params = tiny
    ids, px = _batch(cfg, b=1, t=10)
    pad = 5
    padded = jnp.concatenate([jnp.full((1, pad), cfg.pad_token_id, jnp.int32), ids], axis=1)
    mask = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), jnp.ones_like(ids)], axis=1)
    g = jnp.zeros(1, jnp.int32)
    ref = rs.forward(graphdef, params, ids, px, g, output="text")
    out = rs.forward(graphdef, params, padded, px, g, mask, output="text")
    np.testing.assert_allclose(np.asarray(out[:, pad:]), np.asarray(ref), atol=1e-5, rtol=0)
    ref_e = rs.forward(graphdef, params, ids, px, g)
    out_e = rs.forward(graphdef, params, padded, px, g, mask)
    np.testing.assert_allclose(np.asarray(out_e[:, pad:]), np.asarray(ref_e), atol=1e-5, rtol=0)


def test_expanded_length_and_image_positions(tiny):
    cfg, graphdef, params = tiny
    ids, px = _batch(cfg, b=2, t=12, n=1)
    out = rs.forward(graphdef, params, ids, px, jnp.zeros(2, jnp.int32))
    assert out.shape == (2, 12 + cfg.tokens_per_image - 1, cfg.decoder.vocab_size)
    assert out.dtype == jnp.float32
    # Changing the image changes logits after the placeholder but not before it.
    px2 = px.at[:, 0].set(-px[:, 0])
    out2 = rs.forward(graphdef, params, ids, px2, jnp.zeros(2, jnp.int32))
    assert np.abs(np.asarray(out2[:, :3] - out[:, :3])).max() == 0
    assert np.abs(np.asarray(out2[:, 3:] - out[:, 3:])).max() > 1e-4


def test_rows_with_fewer_images_than_slots(tiny):
    """A one-image row in a two-slot batch equals the same row run alone with one slot."""
    cfg, graphdef, params = tiny
    rng = np.random.default_rng(5)
    ids = rng.integers(2, 400, (2, 10)).astype(np.int32)
    ids[0, [2, 4]] = cfg.image_token_id  # two images
    ids[1, 2] = cfg.image_token_id  # one image
    px = jnp.asarray(rng.uniform(-1, 1, (2, 2, 64, 64, 3)).astype(np.float32))
    g = jnp.zeros(2, jnp.int32)
    both = rs.forward(graphdef, params, jnp.asarray(ids), px, g, output="text")
    alone = rs.forward(graphdef, params, jnp.asarray(ids[1:]), px[1:, :1], g[:1], output="text")
    np.testing.assert_allclose(np.asarray(both[1]), np.asarray(alone[0]), atol=1e-5, rtol=0)


def test_remat_and_bf16_compute(tiny):
    cfg, graphdef, params = tiny
    ids, px = _batch(cfg)
    g = jnp.zeros(2, jnp.int32)
    ref = rs.forward(graphdef, params, ids, px, g)
    def grad(gd):
        return jax.grad(lambda p: jnp.sum(jnp.tanh(rs.forward(gd, p, ids, px, g))))(params)

    ref_grad = grad(graphdef)
    for policy in ("full", "dots", "dots_all"):
        gd_remat, _ = rs.abstract_init(cfg.replace(remat_policy=policy))
        np.testing.assert_allclose(np.asarray(rs.forward(gd_remat, params, ids, px, g)), np.asarray(ref), atol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6),
                     grad(gd_remat), ref_grad)
    with pytest.raises(ValueError, match="remat_policy='most'"):
        cfg.replace(remat_policy="most")
    gd_bf16, _ = rs.abstract_init(cfg.replace(dtype="bfloat16"))
    out = rs.forward(gd_bf16, params, ids, px, g)
    assert out.dtype == jnp.float32
    assert np.abs(np.asarray(out - ref)).max() < 0.1


def test_forward_compiles_once_per_shape(tiny):
    cfg, graphdef, params = tiny
    ids, px = _batch(cfg, b=2, t=7, seed=1)
    before = rs.forward._cache_size()
    for seed in range(3):
        ids, px = _batch(cfg, b=2, t=7, seed=seed)
        rs.forward(graphdef, params, ids, px, jnp.full((2,), seed % 3, jnp.int32))
    assert rs.forward._cache_size() == before + 1


def test_param_tree_names_mirror_hf(tiny):
    _, _, params = tiny
    assert set(params) == {"vision", "connector", "decoder", "lm_head"}
    assert params["decoder"]["layers"]["mlp"]["gate_proj"]["kernel"].shape == (2, 3, 64, 128)
    assert params["vision"]["layers"]["self_attn"]["out_proj"]["kernel"].shape == (2, 64, 64)
    assert params["connector"]["image_newline"].shape == (64,)


@pytest.mark.parametrize("blocks", [2, 3])
def test_causal_blocks_match_full_attention_values_and_grads(blocks):
    """Query blocks over keys up to each block's end == the full square, with left padding (rows
    that see no key at all) and a KV-cache-style tail of masked keys (S > T)."""
    from rsunivlm_jax.layers import attention as A
    rng = np.random.default_rng(0)
    b, t, s, h, g, k = 2, 11, 14, 4, 2, 8
    q = jnp.asarray(rng.normal(size=(b, t, h, k)), jnp.float32)
    kk, v = (jnp.asarray(rng.normal(size=(b, s, g, k)), jnp.float32) for _ in range(2))
    real = np.ones((b, s), bool)
    real[1, :3] = False  # row 1: three left-padding positions
    real[:, t:] = False  # cache tail
    mask = jnp.asarray(np.tril(np.ones((t, s), bool))[None] & real[:, None, :])
    do = jnp.asarray(rng.normal(size=(b, t, h, k)), jnp.float32)

    def loss(q, kk, v, n):
        return jnp.sum(A.dot_product_attention(q, kk, v, mask, k ** -0.5, causal_blocks=n) * do)

    with jax.default_matmul_precision("highest"):
        full = A.dot_product_attention(q, kk, v, mask, k ** -0.5)
        got = A.dot_product_attention(q, kk, v, mask, k ** -0.5, causal_blocks=blocks)
        np.testing.assert_allclose(np.asarray(got), np.asarray(full), atol=1e-6, rtol=0)
        grads = [jax.grad(loss, argnums=(0, 1, 2))(q, kk, v, n) for n in (1, blocks)]
        for a, c in zip(*grads):
            np.testing.assert_allclose(np.asarray(c), np.asarray(a), atol=1e-6, rtol=0)
    # The padding rows (no key) really are the mean of all S values, as in the full square.
    np.testing.assert_allclose(np.asarray(got)[1, 0], np.asarray(v)[1].mean(0).repeat(h // g, 0), atol=1e-6)
