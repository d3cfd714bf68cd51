"""Generation against transformers `generate` (greedy, left padding, repetition penalty, images),
KV-cache logits against the full forward, sampling reproducibility, per-row expert routing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rsunivlm_jax as rs
from rsunivlm_jax import checkpoints
from rsunivlm_jax.inference import constrained as C
from rsunivlm_jax.inference.generate import answer_ids, generate


@pytest.fixture(autouse=True)
def _highest():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def H():
    from tests import hf_utils
    return hf_utils


@pytest.fixture(scope="module")
def qwen_pair(H, tmp_path_factory):
    """A tiny transformers Qwen2ForCausalLM and our model with its weights (through the converter)."""
    hf = H.text_model(H.qwen2_hf_config())
    d = tmp_path_factory.mktemp("qwen")
    pre = H.convert(H.save_hf(hf, d / "src"), d / "dst")
    cfg = pre.config.replace(vision=H.TINY_VISION, image_token_id=H.IMAGE_TOKEN)
    graphdef, params = checkpoints.assemble(cfg, pre)
    return hf, graphdef, params


def _hf_generate(H, model, ids, mask, n, eos, rp, **kw):
    torch = H.torch
    with torch.no_grad():
        out = model.generate(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
                             max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=0,
                             repetition_penalty=rp, **kw)
    return out[:, ids.shape[1]:].numpy()


def _assert_same(ours, ref, pad=0):
    """Token-for-token equality; transformers stops when every row is done, ours pads to max_new_tokens."""
    assert (ours[:, :ref.shape[1]] == ref).all(), (ours, ref)
    assert (ours[:, ref.shape[1]:] == pad).all()


def _padded_batch(vocab):
    rng = np.random.default_rng(0)
    ids = rng.integers(2, vocab - 2, (3, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :5] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.torch
def test_greedy_matches_transformers_single_and_left_padded_batch(H, qwen_pair):
    hf, graphdef, params = qwen_pair
    ids, mask = _padded_batch(H.VOCAB)
    probe = _hf_generate(H, hf, ids, mask, 12, None, 1.0)
    eos = [int(probe[1, 4])]  # a token row 1 reaches mid-way: exercises stopping and padding
    ref = _hf_generate(H, hf, ids, mask, 12, eos, 1.0)
    out = generate(graphdef, params, ids, mask, None, None, max_new_tokens=12, eos_ids=eos, pad_id=0)
    _assert_same(out.tokens, ref)
    assert out.lengths[1] == int(np.argmax(ref[1] == eos[0])) + 1
    single = generate(graphdef, params, ids[1:2, 3:], None, None, None, max_new_tokens=12, eos_ids=eos, pad_id=0)
    ref1 = _hf_generate(H, hf, ids[1:2, 3:], mask[1:2, 3:], 12, eos, 1.0)
    _assert_same(single.tokens, ref1)
    assert (single.tokens[0] == out.tokens[1]).all()  # batched == alone


@pytest.mark.torch
def test_greedy_repetition_penalty_matches_transformers(H, qwen_pair):
    hf, graphdef, params = qwen_pair
    ids, mask = _padded_batch(H.VOCAB)
    plain = _hf_generate(H, hf, ids, mask, 12, [1], 1.0)
    ref = _hf_generate(H, hf, ids, mask, 12, [1], 1.3)
    assert (plain != ref).any()  # the penalty matters for this model
    out = generate(graphdef, params, ids, mask, None, None, max_new_tokens=12, eos_ids=[1], pad_id=0,
                   repetition_penalty=1.3)
    _assert_same(out.tokens, ref)


@pytest.fixture(scope="module")
def llava_pair(H, tmp_path_factory):
    """Tiny LLaVA-OneVision with larger random weights (the default init makes greedy output constant)."""
    torch = H.torch
    model, _, _ = H.llava_ov()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if prm.dim() >= 2:
                prm.normal_(0, 0.1)
            else:
                prm.normal_(1.0 if "norm" in name else 0.0, 0.1)
    d = tmp_path_factory.mktemp("llava")
    pre = H.convert(H.save_hf(model, d / "src"), d / "dst")
    return model, pre


@pytest.mark.torch
@pytest.mark.parametrize("num_images", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_greedy_with_images_matches_llava_onevision(H, llava_pair, num_images):
    torch = H.torch
    model, pre = llava_pair
    ours_ids, hf_ids, pixels = H.llava_inputs(num_images)
    with torch.no_grad():  # base view + image_newline per image (see tests/hf_utils.llava_ref_logits)
        ref = model.generate(
            input_ids=torch.from_numpy(hf_ids).long(), attention_mask=torch.ones(hf_ids.shape, dtype=torch.long),
            pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))[:, None],
            image_sizes=torch.tensor([[32, 32]] * num_images), batch_num_images=torch.tensor([2]),
            max_new_tokens=10, do_sample=False, eos_token_id=[3], pad_token_id=0, repetition_penalty=1.3)
    ref = ref[:, hf_ids.shape[1]:].numpy()
    out = generate(pre.graphdef, pre.params, ours_ids, None, pixels[None], [0], max_new_tokens=10, eos_ids=[3],
                   pad_id=0, repetition_penalty=1.3)
    _assert_same(out.tokens, ref)


def _tiny_batch(cfg, b=2, t=10, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, cfg.decoder.vocab_size - 2, (b, t)).astype(np.int32)
    ids[:, 2] = cfg.image_token_id
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # row 1: left padding before its image
    px = rng.uniform(-1, 1, (b, 1, cfg.vision.image_size, cfg.vision.image_size, 3)).astype(np.float32)
    return ids, mask, px


@pytest.mark.parametrize("dispatch", ["auto", "dense_mask"])
def test_kv_cache_logits_equal_full_forward(tiny, dispatch):
    """Decode steps (transposed kernel copies, unrolled layers) against one full forward pass."""
    cfg, graphdef, params = tiny
    if dispatch != cfg.gmoe_dispatch:
        cfg = cfg.replace(gmoe_dispatch=dispatch)
        graphdef, _ = rs.abstract_init(cfg)
    ids, mask, px = _tiny_batch(cfg)
    n = 8
    out = generate(graphdef, params, ids, mask, px, [1, 1], max_new_tokens=n, eos_ids=(), return_logits=True,
                   repetition_penalty=1.2, length_bucket=None)
    full_ids = np.concatenate([ids, out.tokens], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(out.tokens)], axis=1)
    full = np.asarray(rs.forward(graphdef, params, jnp.asarray(full_ids), jnp.asarray(px), jnp.ones(2, jnp.int32),
                                 jnp.asarray(full_mask), output="text"))
    t = ids.shape[1]
    ref = full[:, t - 1:t - 1 + n]  # text entry t - 1 + i predicts generated token i
    assert np.abs(out.logits - ref).max() <= 1e-4


def test_sampling_is_reproducible_for_a_key(tiny):
    cfg, graphdef, params = tiny
    ids, mask, px = _tiny_batch(cfg, seed=1)
    kw = dict(max_new_tokens=12, eos_ids=(), do_sample=True, temperature=1.5, top_k=100)
    a = generate(graphdef, params, ids, mask, px, [0, 0], rng=jax.random.key(7), **kw)
    b = generate(graphdef, params, ids, mask, px, [0, 0], rng=jax.random.key(7), **kw)
    c = generate(graphdef, params, ids, mask, px, [0, 0], rng=jax.random.key(8), **kw)
    assert (a.tokens == b.tokens).all()
    assert (a.tokens != c.tokens).any()


@pytest.mark.parametrize("dispatch", ["auto", "ragged", pytest.param("dense_mask", marks=pytest.mark.slow)])
def test_each_row_uses_its_own_expert(tiny, dispatch):
    """"auto" splits a mixed batch per expert on CPU; the others route it inside one call."""
    cfg, graphdef, params = tiny
    if dispatch != cfg.gmoe_dispatch:
        cfg = cfg.replace(gmoe_dispatch=dispatch)
        graphdef, _ = rs.abstract_init(cfg)
    ids, mask, px = _tiny_batch(cfg, b=3, seed=2)
    mask[:] = 1
    batched = generate(graphdef, params, ids, mask, px, [0, 1, 2], max_new_tokens=6, eos_ids=())
    rows = [generate(graphdef, params, ids[b:b + 1], mask[b:b + 1], px[b:b + 1], [b], max_new_tokens=6,
                     eos_ids=()).tokens[0] for b in range(3)]
    assert (batched.tokens == np.stack(rows)).all()
    assert len({tuple(r) for r in rows}) > 1  # the experts differ


def test_input_errors(real_vocab_tiny, qwen_tokenizer):
    cfg, graphdef, params = real_vocab_tiny
    ids = np.full((1, 4), 100, np.int32)
    with pytest.raises(ValueError, match="no real token"):
        generate(graphdef, params, ids, np.zeros_like(ids), None, None, max_new_tokens=2, config=cfg)
    con = C.box_constraint(qwen_tokenizer, cfg.decoder.vocab_size, 1)
    with pytest.raises(ValueError, match="cannot hold a complete constrained answer"):
        generate(graphdef, params, ids, None, None, None, max_new_tokens=12, constraint=con, config=cfg)
    with pytest.raises(ValueError, match="constraint is for 1 rows"):
        generate(graphdef, params, np.ones((2, 4), np.int32), None, None, None, max_new_tokens=20, constraint=con,
                 config=cfg)
    with pytest.raises(ValueError, match="vocabulary"):
        generate(graphdef, params, ids, None, None, None, max_new_tokens=20, config=cfg,
                 constraint=C.box_constraint(qwen_tokenizer, 151700, 1))


def test_answer_ids_drop_eos_and_padding():
    from rsunivlm_jax.inference.generate import GenerateOutput
    out = GenerateOutput(np.array([[5, 6, 9, 0], [7, 7, 7, 7]]), np.array([3, 4]))
    assert answer_ids(out, [9]) == [[5, 6], [7, 7, 7, 7]]


@pytest.mark.slow
def test_sharded_batch_matches_single_device(tiny):
    cfg, graphdef, params = tiny
    ids, mask, px = _tiny_batch(cfg, b=3, seed=4)
    mesh = rs.make_mesh((-1,), ("data",))
    replicated = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    sharded = generate(graphdef, replicated, ids, mask, px, [0, 0, 0], max_new_tokens=6, eos_ids=(), mesh=mesh)
    plain = generate(graphdef, params, ids, mask, px, [0, 0, 0], max_new_tokens=6, eos_ids=())
    assert sharded.tokens.shape == (3, 6) and (sharded.tokens == plain.tokens).all()


def test_decode_layers_are_transposed_expert_slices(tiny):
    """The decode loop stores each layer's matrices `[out, in]` (the batch's expert only, when all
    rows share one) in modules marked `kernel_transposed`, which compute what the model's own
    layers compute; with mixed experts the expert kernels keep their layout. The model is untouched."""
    from rsunivlm_jax.functional import merge
    from rsunivlm_jax.inference.generate import _decode_layers, _layers_for_step

    cfg, graphdef, params = tiny
    model = merge(graphdef, params)
    layer_graphdef, layers, g = _decode_layers(model, jnp.asarray([2, 2]), True)
    assert len(layers) == cfg.decoder.num_hidden_layers and (np.asarray(g) == 0).all()
    stacked = params["decoder"]["layers"]
    up = np.asarray(layers[0]["mlp"]["up_proj"]["kernel"])  # expert 2 of layer 0, stored [1, F, D]
    np.testing.assert_array_equal(up[0], np.asarray(stacked["mlp"]["up_proj"]["kernel"])[0, 2].T)
    q = np.asarray(layers[1]["self_attn"]["q_proj"]["kernel"])
    np.testing.assert_array_equal(q, np.asarray(stacked["self_attn"]["q_proj"]["kernel"])[1].T)
    layer = _layers_for_step(layer_graphdef, layers)[1]
    assert layer.self_attn.q_proj.kernel_transposed and layer.mlp.up_proj.kernel_transposed
    assert not model.decoder.layers.self_attn.q_proj.kernel_transposed
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 1, cfg.decoder.hidden_size)), jnp.float32)
    own = jax.tree.map(lambda a: a[1], nnx.to_pure_dict(nnx.state(model.decoder.layers)))
    own_layer = nnx.merge(nnx.graphdef(model.decoder.layers), own)
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(np.asarray(layer.self_attn.q_proj(x)), np.asarray(own_layer.self_attn.q_proj(x)),
                                   atol=1e-6)
        np.testing.assert_allclose(np.asarray(layer.mlp(x, jnp.zeros((2,), jnp.int32))),
                                   np.asarray(own_layer.mlp(x, jnp.full((2,), 2, jnp.int32))), atol=1e-6)
    _, mixed, g = _decode_layers(model, jnp.asarray([2, 0]), False)  # all experts kept, rows keep theirs
    assert np.asarray(mixed[0]["mlp"]["up_proj"]["kernel"]).shape == np.asarray(stacked["mlp"]["up_proj"]["kernel"]).shape[1:]
    assert (np.asarray(g) == [2, 0]).all()


def test_decode_loop_copies_no_weights(tiny):
    """No weight-sized transpose or copy inside the compiled decode loop: XLA:CPU does not fold a
    transpose of a loop-invariant kernel into its dot but copies it at every step (a 4x slower
    decode once). Checked on the optimised HLO of the while loop's body."""
    import re
    from rsunivlm_jax.inference import generate as gen

    cfg, graphdef, params = tiny
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 50, (1, 8)), jnp.int32)
    st = gen._Static(max_new_tokens=4, eos_ids=(), pad_id=0, sampling=gen.SamplingParams(), vocab_limit=None,
                     return_logits=False, homogeneous=True)
    hlo = jax.jit(lambda p, i: gen._generate_jit(graphdef, st, p, i, jnp.ones_like(i), None,
                                                 jnp.zeros((1,), jnp.int32), jax.random.key(0), None)
                  ).lower(params, ids).compile().as_text()
    shapes = set()
    for a in jax.tree.leaves(params["decoder"]["layers"]):
        if np.ndim(a) >= 3:
            shapes |= {tuple(np.shape(a)[-2:]), tuple(np.shape(a)[-2:])[::-1]}
    comps, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"(?:ENTRY )?(%[\w.\-]+) .*\{$", line)
        if head:
            name = head.group(1)
            comps[name] = []
        elif line == "}":
            name = None
        elif name:
            comps[name].append(line)
    loop = [c for line in comps.values() for l in line for c in re.findall(r"body=(%[\w.\-]+)", l)]
    assert loop, "no while loop in the optimised HLO"
    seen, moved = set(), []
    while loop:  # the loop bodies and everything they call
        c = loop.pop()
        if c in seen or c not in comps:
            continue
        seen.add(c)
        for line in comps[c]:
            loop += re.findall(r"(?:calls|body|condition|to_apply)=(%[\w.\-]+)", line)
            m = re.search(r"= f32\[([\d,]+)\]\S* (transpose|copy)\(", line)
            if m and tuple(int(d) for d in m.group(1).split(","))[-2:] in shapes:
                moved.append(line.strip())
    assert not moved, moved
