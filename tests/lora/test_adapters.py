"""Adapters on the G-MoE model: targets, merged == unmerged under every routing strategy, rows
routed to their expert's adapter, sharding by the kernels' logical axes, names shared with the
`--to-torch` export, and the llava_next (per-expert) adapter files."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsunivlm_jax as rs
from rsunivlm_jax.convert import export as export_lib
from rsunivlm_jax.lora import adapters as AD, peft_format as PF
from rsunivlm_jax.lora.config import LoraConfig, resolve_targets
from rsunivlm_jax.tree import flatten
from tests.lora.helpers import flat_numpy, random_adapters

ALL = ("attention", "experts", "connector", "vision")


@pytest.fixture(autouse=True)
def _highest():
    with jax.default_matmul_precision("highest"):
        yield


def tiny(**kw):
    return rs.presets.get("tiny").replace(**kw)


def inputs(cfg, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, cfg.decoder.vocab_size - 2, (batch, 10)).astype(np.int32)
    ids[:, 1] = cfg.image_token_id
    pixels = rng.uniform(-1, 1, (batch, 1, cfg.vision.image_size, cfg.vision.image_size, 3)).astype(np.float32)
    return jnp.asarray(ids), jnp.asarray(pixels)


def test_targets_by_group_name_and_regex():
    cfg = tiny()
    paths = lambda *t: [x.path for x in resolve_targets(cfg, LoraConfig(targets=t))]  # noqa: E731
    assert paths("attention") == [f"decoder/layers/self_attn/{p}_proj" for p in "qkvo"]
    assert paths("q_proj") == ["vision/layers/self_attn/q_proj", "decoder/layers/self_attn/q_proj"]
    assert paths("experts", r"connector/linear_1") == ["connector/linear_1"] + [
        f"decoder/layers/mlp/{p}_proj" for p in ("gate", "up", "down")]
    experts = resolve_targets(cfg, LoraConfig(targets=("experts",)))
    assert {(t.kind, t.stack, t.stack_axes) for t in experts} == {("expert", (2, 3), ("layers", "expert"))}
    with pytest.raises(ValueError, match=r"\['lm_head'\] select no module"):
        resolve_targets(cfg, LoraConfig(targets=("attention", "lm_head")))
    with pytest.raises(ValueError, match="invalid regular expression"):
        resolve_targets(cfg, LoraConfig(targets=("decoder/(",)))
    with pytest.raises(ValueError, match="rank=0"):
        LoraConfig(rank=0)


def test_gmoe_merged_equals_unmerged_and_rows_use_their_expert():
    """Reference: the adapters merged into the kernels, every expert on every row (dense mask). Each
    routing strategy with unmerged adapters gives every row of a mixed batch its own expert's
    adapted function; "auto" on a one-expert batch takes the one-expert path."""
    cfg = tiny(gmoe_dispatch="dense_mask")
    lora = LoraConfig(rank=4, alpha=8.0, targets=ALL)
    graphdef, base = rs.init(cfg, 0)
    adapters = random_adapters(cfg, lora)
    ids, pixels = inputs(cfg)
    mixed, one = jnp.arange(3, dtype=jnp.int32), jnp.full((3,), 1, jnp.int32)
    merged = AD.merge(base, adapters, lora)
    reference = {name: np.asarray(rs.forward(graphdef, merged, ids, pixels, g)) for name, g in
                 (("mixed", mixed), ("one", one))}
    plain = np.asarray(rs.forward(graphdef, base, ids, pixels, mixed))
    assert np.abs(reference["mixed"] - plain).max() > 0.05
    combined = AD.combine(base, adapters)
    for strategy in ("auto", "dense_mask", "ragged", "gather"):
        lora_graphdef = AD.graphdef(cfg.replace(gmoe_dispatch=strategy), lora)
        out = np.asarray(rs.forward(lora_graphdef, combined, ids, pixels, mixed))
        assert np.abs(out - reference["mixed"]).max() <= 1e-5, strategy
    out = np.asarray(rs.forward(AD.graphdef(cfg.replace(gmoe_dispatch="auto"), lora), combined, ids, pixels, one))
    assert np.abs(out - reference["one"]).max() <= 1e-5


def test_an_experts_adapter_only_changes_its_rows():
    cfg = tiny(gmoe_dispatch="dense_mask")
    lora = LoraConfig(rank=2, targets=("experts",))
    _, base = rs.init(cfg, 0)
    adapters = random_adapters(cfg, lora)
    only_1 = adapters
    for name in ("gate_proj", "up_proj", "down_proj"):  # zero B for experts 0 and 2
        only_1["decoder"]["layers"]["mlp"][name]["lora"]["lora_b"][:, [0, 2]] = 0.0
    ids, pixels = inputs(cfg)
    g = jnp.arange(3, dtype=jnp.int32)
    out = np.asarray(rs.forward(AD.graphdef(cfg, lora), AD.combine(base, only_1), ids, pixels, g))
    plain = np.asarray(rs.forward(rs.abstract_init(cfg)[0], base, ids, pixels, g))
    assert np.abs(out[0] - plain[0]).max() <= 1e-6 and np.abs(out[2] - plain[2]).max() <= 1e-6
    assert np.abs(out[1] - plain[1]).max() > 1e-3


def test_adapters_are_sharded_like_their_kernels():
    cfg = tiny()
    lora = LoraConfig(rank=4, targets=ALL)
    mesh = rs.make_mesh((1, 4, 2))
    adapters = AD.init(cfg, lora, 0, mesh=mesh, rules="fsdp_tensor")
    P = jax.sharding.PartitionSpec
    spec = lambda p: flatten(adapters)[p].sharding.spec  # noqa: E731
    assert spec("decoder/layers/self_attn/q_proj/lora/lora_a") == P(None, "fsdp", None)
    assert spec("decoder/layers/mlp/up_proj/lora/lora_b") == P(None, None, None, "tensor")
    assert spec("decoder/layers/mlp/down_proj/lora/lora_a") == P(None, None, "tensor", None)
    assert spec("connector/linear_1/lora/lora_a") == P("fsdp", None)
    assert spec("vision/layers/mlp/fc1/lora/lora_b") == P(None, None, "tensor")


def test_dropout_masks_differ_by_key_and_layer():
    cfg = tiny()
    lora = LoraConfig(rank=4, dropout=0.5, targets=("attention",))
    _, base = rs.init(cfg, 0)
    adapters = random_adapters(cfg, lora, scale=1.0)
    model = rs.merge(AD.graphdef(cfg, lora), AD.combine(base, adapters))
    q = model.decoder.layers.self_attn.q_proj.lora
    x = jnp.ones((1, 8, 64))
    with AD.dropout_key(jax.random.key(0)):
        a0 = q._dropout(x)
        again = q._dropout(x)
    with AD.dropout_key(jax.random.key(1)):
        a1 = q._dropout(x)
    assert np.array_equal(a0, again) and not np.array_equal(a0, a1)
    assert set(np.unique(np.asarray(a0)).tolist()) == {0.0, 2.0}
    np.testing.assert_array_equal(q._dropout(x), x)  # no key: no dropout (evaluation)
    # Two layers of the stack (their own A) draw different masks from the same key.
    layer = lambda i: rs.merge(AD.graphdef(cfg, lora), AD.combine(  # noqa: E731
        base, jax.tree.map(lambda a: a[i:i + 1], adapters))).decoder.layers.self_attn.q_proj.lora
    with AD.dropout_key(jax.random.key(0)):
        masks = [np.asarray(layer(i)._dropout(x)) for i in range(2)]
    assert not np.array_equal(masks[0], masks[1])


def test_peft_names_are_the_torch_export_keys_and_llava_next_round_trips(tmp_path):
    cfg = tiny()
    lora = LoraConfig(rank=3, alpha=4.0, targets=ALL)
    _, base = rs.init(cfg, 0)
    adapters = random_adapters(cfg, lora)
    _, tensors = export_lib.torch_tensors(jax.tree.map(np.asarray, base), ("vision", "connector", "decoder", "lm_head"),
                                          3, np.dtype("float32"))
    keys = {t.key for t in tensors}
    sd = PF.state_dict(adapters, "llava_next", 3)
    modules = {k[len(PF.PREFIX):].rsplit(".lora_", 1)[0] for k in sd}
    assert len(modules) == 2 * 6 + 2 + 2 * 4 + 2 * 3 * 3
    assert {m + ".weight" for m in modules} <= keys
    assert "model.layers.1.mlp.2.down_proj" in modules and "model.mm_projector.2" in modules
    PF.save(tmp_path / "a", adapters, lora, layout="llava_next", num_experts=3)
    back, lora_back, summary = PF.load(tmp_path / "a", cfg)
    assert summary["layout"] == "llava_next"
    fa, fb = flat_numpy(adapters), flat_numpy(back)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    assert lora_back.scaling == lora.scaling
    with pytest.raises(ValueError, match="has one MLP per layer"):
        PF.save(tmp_path / "b", adapters, lora, layout="hf_memory_5x", num_experts=3)


@pytest.mark.parametrize("targets", [ALL, ("attention",)])
def test_generate_with_unmerged_adapters_equals_merged(targets):
    """The decode loop's copy (kernels stored [out, in] for one-row batches) keeps the adapters'
    effect: greedy generation with unmerged adapters gives the merged model's tokens and logits, for
    one row, for a batch on one expert and for a batch that mixes experts."""
    from rsunivlm_jax.inference.generate import generate
    cfg = tiny()
    lora = LoraConfig(rank=4, alpha=8.0, targets=targets)
    graphdef, base = rs.init(cfg, 0)
    adapters = random_adapters(cfg, lora)
    ids, pixels = inputs(cfg)
    merged = AD.merge(base, adapters, lora)
    for rows, g in ((slice(0, 1), [2]), (slice(None), [1, 1, 1]), (slice(None), [2, 0, 1])):  # one row: [out, in]
        want = generate(graphdef, merged, ids[rows], None, pixels[rows], g, max_new_tokens=5, eos_ids=(),
                        return_logits=True)
        got = generate(AD.graphdef(cfg, lora), AD.combine(base, adapters), ids[rows], None, pixels[rows], g,
                       max_new_tokens=5, eos_ids=(), return_logits=True)
        assert (got.tokens == want.tokens).all(), g
        np.testing.assert_allclose(got.logits, want.logits, atol=1e-4)
