"""Round trips (torch -> ours -> torch and ours -> torch -> ours are bit-identical), sharded restore,
and the command line."""
import json

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from tests import hf_utils as H

torch = H.torch
import rsunivlm_jax as rs  # noqa: E402
from rsunivlm_jax import checkpoints  # noqa: E402
from rsunivlm_jax.convert.__main__ import main  # noqa: E402
from rsunivlm_jax.convert.export import export_to_torch  # noqa: E402

pytestmark = pytest.mark.torch


def _torch_bits(t):
    """A torch tensor as a numpy array with the same bits (bfloat16 via ml_dtypes)."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _read_dir(d):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert x.tobytes() == y.tobytes(), k


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: np.asarray(v)})
    return out


def test_torch_ours_torch_is_bit_identical(gmoe, tmp_path):
    _, tensors, _, pre = gmoe
    export_to_torch(pre.path, tmp_path / "torch")
    written = _read_dir(tmp_path / "torch")
    source = {k: _torch_bits(v) for k, v in tensors.items() if k not in pre.meta["ignored_tensors"]}
    _same(written, source)
    config = json.loads((tmp_path / "torch" / "config.json").read_text())
    assert config["model_type"] == "llava_qwen_gmoe" and config["mm_vision_select_layer"] == -1
    assert (tmp_path / "torch" / "generation_config.json").is_file()


def test_ours_torch_ours_is_bit_identical(gmoe, tmp_path):
    _, _, _, pre = gmoe
    # small shards: exercises the sharded writer and the index on the way back
    export_to_torch(pre.path, tmp_path / "torch", max_shard_bytes=40_000)
    assert (tmp_path / "torch" / "model.safetensors.index.json").is_file()
    again = H.convert(tmp_path / "torch", tmp_path / "ours")
    assert again.config == pre.config and again.parts == pre.parts
    _same(_flat(again.params), _flat(pre.params))


@pytest.mark.parametrize("stored", ["bfloat16", "float32"])
def test_bfloat16_release_round_trip(gmoe, tmp_path, stored):
    """A bf16 source (like the release) survives torch -> ours (bf16 or f32) -> torch (bf16) bit for bit."""
    _, tensors, src, _ = gmoe
    cfg = json.loads((src / "config.json").read_text())
    bf = {k: v for k, v in tensors.items() if "inv_freq" not in k}
    bsrc = H.write_checkpoint(tmp_path / "src", bf, cfg, dtype=torch.bfloat16)
    pre = H.convert(bsrc, tmp_path / "ours", dtype=stored)
    assert pre.meta["source"]["dtypes"] == {"bfloat16": len(bf)}
    assert {str(x.dtype) for x in jax.tree.leaves(pre.params)} == {stored}
    export_to_torch(pre.path, tmp_path / "torch", dtype="bfloat16")
    _same(_read_dir(tmp_path / "torch"), {k: _torch_bits(v.to(torch.bfloat16)) for k, v in bf.items()})


def test_dense_tied_round_trip_keeps_the_dense_layout(dense, tmp_path):
    _, tensors, src, = dense
    pre = H.convert(src, tmp_path / "ours")
    assert pre.config.gmoe.num_experts == 1 and "lm_head" not in pre.params
    export_to_torch(pre.path, tmp_path / "torch")
    _same(_read_dir(tmp_path / "torch"), {k: _torch_bits(v) for k, v in tensors.items()})
    assert json.loads((tmp_path / "torch" / "config.json").read_text())["model_type"] == "llava_qwen"
    again = H.convert(tmp_path / "torch", tmp_path / "ours2")
    assert again.config == pre.config
    _same(_flat(again.params), _flat(pre.params))


@pytest.mark.parametrize("shape,rules", [((1, 8, 1), "fsdp"), ((2, 2, 2), "fsdp_tensor")])
def test_sharded_restore_equals_unsharded(gmoe, shape, rules):
    _, _, _, pre = gmoe
    assert len(jax.devices()) == 8
    mesh = rs.make_mesh(shape)
    sharded = checkpoints.load(pre.path, mesh=mesh, rules=rules)
    specs = rs.param_specs(pre.config, rules)
    flat_specs = _flat_specs(specs)
    n_split = 0
    for path, leaf in _leaves(sharded.params):
        assert isinstance(leaf.sharding, jax.sharding.NamedSharding), path
        assert leaf.sharding.mesh == mesh and leaf.sharding.spec == flat_specs[path], path
        n_split += any(s is not None for s in leaf.sharding.spec)
    assert n_split > 5  # really sharded, not replicated
    _same(_flat(sharded.params), _flat(pre.params))


def test_restore_into_another_dtype(gmoe):
    _, _, _, pre = gmoe
    bf = checkpoints.load(pre.path, dtype="bfloat16")
    assert bf.config == pre.config.replace(param_dtype="bfloat16")
    a = np.asarray(bf.params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"])
    b = np.asarray(pre.params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"]).astype(ml_dtypes.bfloat16)
    assert a.dtype == b.dtype and np.array_equal(a, b)


def _leaves(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}/")
        else:
            yield prefix + k, v


def _flat_specs(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flat_specs(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_command_line(gmoe, tmp_path, capsys):
    _, _, src, pre = gmoe
    assert main(["--src", str(src), "--dst", str(tmp_path / "ours"), "--dtype", "bfloat16", "--quiet",
                 "--no-hash"]) == 0
    out = capsys.readouterr().out
    assert "detected layout: llava_next (3 experts, untied lm_head)" in out and "model_type llava_qwen_gmoe" in out
    meta = json.loads((tmp_path / "ours" / "meta.json").read_text())
    assert meta["param_dtype"] == "bfloat16" and meta["mapping_version"] == 1
    assert rs.ModelConfig.from_dict(meta["model_config"]) == pre.config.replace(param_dtype="bfloat16")
    assert main(["--to-torch", "--src", str(tmp_path / "ours"), "--dst", str(tmp_path / "torch"), "--quiet"]) == 0
    assert "llava_next layout" in capsys.readouterr().out
    # refusing to overwrite is an error with status 2 and a message
    assert main(["--src", str(src), "--dst", str(tmp_path / "ours"), "--quiet"]) == 2
    assert "destination exists" in capsys.readouterr().err
