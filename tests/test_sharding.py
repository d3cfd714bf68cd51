"""Sharding on 8 fake CPU devices: presets, specs, validator, sharded forward == single device
without involuntary rematerialization."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import rsunivlm_jax as rs
from rsunivlm_jax import sharding as shd

REMAT_WARNING = "Involuntary full rematerialization"  # XLA's SPMD partitioner, logged to stderr


@pytest.fixture(autouse=True)
def _highest():
    with jax.default_matmul_precision("highest"):
        yield


def test_eight_fake_devices():
    assert len(jax.devices()) == 8


def test_mesh_has_auto_axes_and_resolves_minus_one():
    mesh = rs.make_mesh((2, -1, 2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="needs 16 devices"):
        rs.make_mesh((4, 4, 1))


@pytest.mark.parametrize("preset,expected", [
    ("fsdp", {"decoder/layers/mlp/gate_proj/kernel": P(None, None, "fsdp", None),
              "decoder/embed_tokens/embedding": P(None, "fsdp"),
              "lm_head/kernel": P("fsdp", None),
              "vision/layers/self_attn/q_proj/kernel": P(None, "fsdp", None),
              "decoder/layers/input_layernorm/scale": P(None, None)}),
    ("fsdp_tensor", {"decoder/layers/mlp/gate_proj/kernel": P(None, None, "fsdp", "tensor"),
                     "decoder/layers/mlp/down_proj/kernel": P(None, None, "tensor", "fsdp"),
                     "decoder/embed_tokens/embedding": P("tensor", "fsdp"),
                     "lm_head/kernel": P("fsdp", "tensor"),
                     "decoder/layers/self_attn/q_proj/kernel": P(None, "fsdp", None),
                     "vision/layers/mlp/fc1/kernel": P(None, "fsdp", "tensor")}),
])
def test_params_land_with_expected_specs(preset, expected):
    cfg = rs.presets.get("tiny")
    mesh = rs.make_mesh((2, 2, 2))
    _, params = rs.init(cfg, 0, mesh=mesh, rules=preset)
    flat = {"/".join(str(k.key) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    for path, spec in expected.items():
        assert flat[path].sharding.spec == spec, path
        assert flat[path].sharding.mesh.shape == mesh.shape


def test_full_size_specs_without_allocation():
    specs = rs.param_specs(rs.presets.get("rsunivlm-1b"), "fsdp_tensor")
    assert specs["decoder"]["layers"]["mlp"]["up_proj"]["kernel"] == P(None, None, "fsdp", "tensor")
    shd.validate(rs.functional.abstract_model(rs.presets.get("rsunivlm-1b"))[1], rs.make_mesh((1, 4, 2)),
                 shd.get_rules("fsdp_tensor"))


def test_validator_names_the_parameter():
    cfg = rs.presets.get("tiny").replace(decoder={"hidden_size": 36, "num_attention_heads": 4})
    with pytest.raises(ValueError) as err:
        rs.init(cfg, 0, mesh=rs.make_mesh((1, 8, 1)), rules="fsdp")
    msg = str(err.value)
    assert "decoder/embed_tokens/embedding" in msg and "size 36" in msg and "'fsdp'" in msg


@pytest.mark.parametrize("preset", ["fsdp", "fsdp_tensor"])
def test_sharded_forward_equals_single_device(preset, capfd):
    cfg = rs.presets.get("tiny")  # "auto" routing, a mixed batch
    graphdef, params = rs.init(cfg, 0)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 500, (4, 9)).astype(np.int32)
    ids[:, 2] = cfg.image_token_id
    px = rng.uniform(-1, 1, (4, 1, 64, 64, 3)).astype(np.float32)
    g = np.array([0, 1, 2, 1], np.int32)
    ref = np.asarray(rs.forward(graphdef, params, jnp.asarray(ids), jnp.asarray(px), jnp.asarray(g)))

    mesh = rs.make_mesh((2, 2, 2))
    _, abstract = rs.abstract_init(cfg, mesh=mesh, rules=preset)
    p_sh = jax.tree.map(lambda a: a.sharding, abstract)
    sharded = jax.device_put(params, p_sh)
    batch_sh = shd.data_sharding(mesh, preset)

    def fwd(p, i, x, gr):
        with shd.use_sharding(mesh, preset):
            return rs.merge(graphdef, p)(i, x, gr)

    fn = jax.jit(fwd, in_shardings=(p_sh, batch_sh, shd.data_sharding(mesh, preset, 5), shd.data_sharding(mesh, preset, 1)),
                 out_shardings=NamedSharding(mesh, P(("data", "fsdp"))))
    out = fn(sharded, jnp.asarray(ids), jnp.asarray(px), jnp.asarray(g))
    assert out.sharding.spec == P(("data", "fsdp"))
    # Embedding lookup and image splice stay batch-sharded: XLA replicated nothing to reshard.
    assert REMAT_WARNING not in capfd.readouterr().err
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)
