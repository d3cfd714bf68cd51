"""Bad checkpoints: each gives one clear ConversionError naming the file / tensor, and writes nothing."""
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tests import hf_utils as H

torch = H.torch
from rsunivlm_jax import checkpoints  # noqa: E402
from rsunivlm_jax.convert import ConversionError  # noqa: E402
from rsunivlm_jax.convert.convert import convert  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A valid tiny bare Qwen2 checkpoint (tied head, one layer) written by save_pretrained."""
    model = H.text_model(H.qwen2_hf_config(tie=True, layers=1), seed=9)
    return H.save_hf(model, tmp_path_factory.mktemp("base") / "src"), model


@pytest.fixture
def src(base, tmp_path):
    return Path(shutil.copytree(base[0], tmp_path / "src"))


def _fails(src: Path, dst: Path, *expected: str, **kwargs) -> str:
    with pytest.raises(ConversionError) as info:
        convert(src, dst, **kwargs)
    msg = str(info.value)
    for text in expected:
        assert text in msg, msg
    assert not dst.exists()
    assert not list(dst.parent.glob(f".{dst.name}.partial-*"))  # no temporary left behind
    return msg


def _edit_tensors(src: Path, edit):
    tensors = load_file(str(src / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(src / "model.safetensors"))


def test_valid_base_converts(src, tmp_path):
    meta = convert(src, tmp_path / "dst")
    assert meta["source"]["layout"] == "qwen2" and meta["lm_head"].startswith("tied")


def test_truncated_safetensors(src, tmp_path):
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    _fails(src, tmp_path / "dst", "model.safetensors: not a valid safetensors file")


def test_missing_tensor(src, tmp_path):
    _edit_tensors(src, lambda t: t.pop("model.layers.0.self_attn.q_proj.bias"))
    msg = _fails(src, tmp_path / "dst", "missing tensor 'model.layers.0.self_attn.q_proj.bias'",
                 "decoder/layers/self_attn/q_proj/bias")
    assert "(1 problem)" in msg


def test_extra_tensor(src, tmp_path):
    _edit_tensors(src, lambda t: t.update({"model.layers.0.mlp.extra_proj.weight": torch.zeros(3, 4)}))
    _fails(src, tmp_path / "dst", "unexpected tensor 'model.layers.0.mlp.extra_proj.weight' [3, 4]")


def test_wrong_shape(src, tmp_path):
    _edit_tensors(src, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(16, 31)}))
    _fails(src, tmp_path / "dst", "'model.layers.0.self_attn.k_proj.weight' has shape [16, 31]; the model needs [16, 32]")


def test_all_problems_reported_together(src, tmp_path):
    def edit(t):
        t.pop("model.norm.weight")
        t["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(2, 2)
        t["bogus"] = torch.zeros(1)
    _edit_tensors(src, edit)
    msg = _fails(src, tmp_path / "dst", "missing tensor 'model.norm.weight'", "unexpected tensor 'bogus'",
                 "q_proj.weight' has shape [2, 2]")
    assert "(3 problems)" in msg


def test_unknown_model_type(src, tmp_path):
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (src / "config.json").write_text(json.dumps(cfg))
    _fails(src, tmp_path / "dst", "unknown model_type 'gpt_neox'")


def test_index_pointing_to_missing_shard(base, tmp_path):
    model = base[1]
    cfg = json.loads((base[0] / "config.json").read_text())
    src = H.write_checkpoint(tmp_path / "src", dict(model.state_dict()), cfg, shards=2)
    (src / "model-00002-of-00002.safetensors").unlink()
    _fails(src, tmp_path / "dst", "model.safetensors.index.json names shard model-00002-of-00002.safetensors",
           "does not exist")


class _Payload:
    """Unpickling this calls open(marker, "w"): code execution if the loader trusts the pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_bin_is_refused_without_running(base, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(base[0] / "config.json", src / "config.json")
    marker = tmp_path / "pwned"
    state = {k: v for k, v in base[1].state_dict().items()}
    state["model.norm.weight"] = _Payload(marker)
    torch.save(state, src / "pytorch_model.bin")
    _fails(src, tmp_path / "dst", "pytorch_model.bin: refused", "not executed")
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    torch.load(src / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


def test_plain_bin_state_dict_converts(base, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(base[0] / "config.json", src / "config.json")
    torch.save(dict(base[1].state_dict()), src / "pytorch_model.bin")
    meta = convert(src, tmp_path / "dst", hash_files=False)
    assert meta["source"]["format"] == "torch"
    a = checkpoints.load(tmp_path / "dst").params["decoder"]["norm"]["scale"]
    assert (a == H.to_np(base[1].model.norm.weight)).all()


def test_failure_while_writing_leaves_nothing(src, tmp_path, monkeypatch):
    def boom(*_a, **_k):
        raise OSError("disk full")
    monkeypatch.setattr(checkpoints, "save_params", boom)
    with pytest.raises(OSError, match="disk full"):
        convert(src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst.partial-*"))


def test_existing_destination_and_bad_options(src, tmp_path):
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("x")
    with pytest.raises(ConversionError, match="destination exists"):
        convert(src, tmp_path / "dst")
    assert (tmp_path / "dst" / "keep.txt").read_text() == "x"
    _fails(src, tmp_path / "d2", "--vocab-rows 500: 500 rows requested but the checkpoint has 200", vocab_rows=500)
    _fails(src, tmp_path / "d3", "real tokens would lose their rows", vocab_rows=150)
    (src / "config.json").unlink()
    _fails(src, tmp_path / "d4", "no config.json")
