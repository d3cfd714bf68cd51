"""LoRA against peft on transformers' LlavaOnevision (dense), and the adapter file format.

The base reaches our model only through the converter; adapters only through peft's files.
"""
import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import hf_utils as H

torch = H.torch
import peft  # noqa: E402  (the [test] extra installs it)

import rsunivlm_jax as rs  # noqa: E402
from rsunivlm_jax.lora import adapters as AD, peft_format as PF  # noqa: E402
from rsunivlm_jax.lora.config import LoraConfig  # noqa: E402
from tests.lora.helpers import flat_numpy, random_adapters  # noqa: E402

pytestmark = pytest.mark.torch

EVERY_LINEAR = (r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
                r"|.*multi_modal_projector\.linear_[12]|.*vision_tower.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)")


@pytest.fixture(autouse=True)
def _highest():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """(tiny LlavaOnevision, its converted checkpoint, a directory) — the base of every test here."""
    model, _, _ = H.llava_ov()
    d = tmp_path_factory.mktemp("peft")
    pre = H.convert(H.save_hf(model, d / "src"), d / "dst")
    return model, pre, d


def _ours(pre, lora, adapters, num_images=1):
    ids, hf_ids, pixels = H.llava_inputs(num_images)
    out = rs.forward(AD.graphdef(pre.config, lora), AD.combine(pre.params, adapters), jnp.asarray(ids),
                     jnp.asarray(pixels)[None], jnp.zeros(1, jnp.int32))
    return np.asarray(out), hf_ids, pixels


def test_peft_adapter_imports_and_matches_peft_forward(llava):
    model, pre, d = llava
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=EVERY_LINEAR, lora_dropout=0.1, init_lora_weights=False)
    torch.manual_seed(1)
    pm = peft.get_peft_model(copy.deepcopy(model), cfg).eval()
    pm.save_pretrained(str(d / "peft"))
    adapters, lora, summary = PF.load(d / "peft", pre.config)
    assert summary["layout"] == "hf_memory_5x" and summary["adapted_slots"] == summary["slots"] == 28
    assert (lora.rank, lora.alpha, lora.dropout, lora.use_rslora) == (4, 8.0, 0.1, False)
    assert len(AD.targets(pre.config, lora)) == 15  # 6 vision + 2 connector + 4 attention + 3 MLP
    ours, hf_ids, pixels = _ours(pre, lora, adapters)
    ref = H.llava_ref_logits(pm, hf_ids, pixels)
    with pm.disable_adapter():
        base_ref = H.llava_ref_logits(pm, hf_ids, pixels)
    assert np.abs(ref - base_ref).max() > 0.1  # the adapters really change the function
    assert np.abs(ours - ref).max() <= 1e-5


def test_exported_adapter_loads_in_peft_with_equal_logits(llava, tmp_path):
    """Our adapters (random, rsLoRA scaling, a subset of modules) -> files -> peft on the HF model."""
    model, pre, _ = llava
    lora = LoraConfig(rank=3, alpha=6.0, targets=("attention", "experts", "connector", "vision_attention"),
                      use_rslora=True)
    adapters = random_adapters(pre.config, lora, seed=7, scale=0.3)
    PF.save(tmp_path / "ours", adapters, lora, layout="hf_memory_5x", num_experts=1)
    cfg = json.loads((tmp_path / "ours" / PF.CONFIG_FILE).read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 3 and cfg["use_rslora"] is True
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "ours")).eval()
    assert sum(1 for n, _ in pm.named_modules() if n.endswith(".lora_A")) == 2 * 4 + 2 + 2 * 4 + 2 * 3
    ours, hf_ids, pixels = _ours(pre, lora, adapters)
    ref = H.llava_ref_logits(pm, hf_ids, pixels)
    assert np.abs(ours - ref).max() <= 1e-5


def test_export_import_round_trip_is_bit_exact(llava, tmp_path):
    _, pre, _ = llava
    lora = LoraConfig(rank=2, alpha=5.0, dropout=0.05, targets=("attention", "experts", "vision"))
    adapters = random_adapters(pre.config, lora, seed=1, scale=1.0)
    PF.save(tmp_path / "a", adapters, lora, layout="hf_memory_5x", num_experts=1)
    back, lora_back, _ = PF.load(tmp_path / "a", pre.config)
    flat_a, flat_b = flat_numpy(adapters), flat_numpy(back)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=k)
    assert (lora_back.rank, lora_back.alpha, lora_back.dropout) == (2, 5.0, 0.05)
    assert [t.path for t in AD.targets(pre.config, lora_back)] == [t.path for t in AD.targets(pre.config, lora)]
    # Written again from what was read: the same bytes.
    PF.save(tmp_path / "b", back, lora_back, layout="hf_memory_5x", num_experts=1)
    assert (tmp_path / "a" / PF.WEIGHTS_FILE).read_bytes() == (tmp_path / "b" / PF.WEIGHTS_FILE).read_bytes()


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "use_dora=True is not supported"),
    ({"peft_type": "IA3"}, "only LORA adapters"),
    ({"r": 0}, "r=0"),
    ({"bias": "all"}, "bias='all' is not supported"),
])
def test_bad_adapter_config_is_named(llava, tmp_path, change, message):
    _, pre, _ = llava
    lora = LoraConfig(rank=2, targets=("attention",))
    PF.save(tmp_path / "a", random_adapters(pre.config, lora), lora, layout="hf_memory_5x", num_experts=1)
    path = tmp_path / "a" / PF.CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(PF.AdapterFormatError, match=message):
        PF.load(tmp_path / "a", pre.config)


def test_adapter_that_does_not_fit_the_model_is_named(llava, tmp_path):
    from safetensors.numpy import load_file, save_file
    _, pre, _ = llava
    lora = LoraConfig(rank=2, targets=("attention",))
    PF.save(tmp_path / "a", random_adapters(pre.config, lora), lora, layout="hf_memory_5x", num_experts=1)
    weights = tmp_path / "a" / PF.WEIGHTS_FILE
    sd = load_file(str(weights))
    key = "base_model.model.model.language_model.layers.1.self_attn.q_proj.lora_A.weight"
    sd[key] = np.zeros((2, 5), np.float32)
    sd["base_model.model.model.language_model.layers.7.self_attn.q_proj.lora_A.weight"] = sd[key]
    sd["base_model.model.model.language_model.layers.7.self_attn.q_proj.lora_B.weight"] = np.zeros((32, 2), np.float32)
    save_file(sd, str(weights))
    with pytest.raises(PF.AdapterFormatError) as e:
        PF.load(tmp_path / "a", pre.config)
    assert "layers.1.self_attn.q_proj: lora_A (2, 5)" in str(e.value)
    assert "layers.7.self_attn.q_proj: index (7,) is outside" in str(e.value)
    weights.write_bytes(b"not safetensors")
    with pytest.raises(PF.AdapterFormatError, match="adapter_model.safetensors: not a valid safetensors file"):
        PF.load(tmp_path / "a", pre.config)


def test_cli_bad_input_is_one_line_and_status_2(llava, tmp_path, capsys):
    """`rsunivlm-lora`: a missing directory, a non-LoRA run, a corrupt adapter file and a wrong
    layout each end with one line naming the input, exit status 2 and nothing at --dst."""
    from rsunivlm_jax.lora.cli import main
    _, pre, d = llava
    base = str(d / "dst")
    lora = LoraConfig(rank=2, targets=("attention",))
    PF.save(tmp_path / "a", random_adapters(pre.config, lora), lora, layout="hf_memory_5x", num_experts=1)
    broken = tmp_path / "broken"
    PF.save(broken, random_adapters(pre.config, lora), lora, layout="hf_memory_5x", num_experts=1)
    (broken / PF.WEIGHTS_FILE).write_bytes(b"not safetensors")
    cases = [
        (["export", "--run", str(tmp_path / "missing")], "missing: does not exist"),
        (["export", "--run", base], "not a LoRA training run"),
        (["merge", "--adapter", str(tmp_path / "missing"), "--base", base], "no adapter_config.json"),
        (["merge", "--adapter", str(broken), "--base", base], "adapter_model.safetensors: not a valid safetensors"),
        (["merge", "--adapter", str(tmp_path / "a"), "--base", base, "--layout", "llava_next"],
         "adapter_model.safetensors: the adapter's module names are not those of layout 'llava_next'"),
        (["merge", "--adapter", str(tmp_path / "a"), "--base", str(tmp_path / "missing")], "missing: does not exist"),
        (["merge", "--adapter", str(tmp_path / "a"), "--run", base], "give exactly one of --run"),
    ]
    for i, (argv, message) in enumerate(cases):
        dst = tmp_path / f"out{i}"
        assert main([*argv, "--dst", str(dst)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("rsunivlm-lora: error: ") and message in err and "\n" not in err, (argv, err)
        assert not dst.exists(), argv
    assert main(["merge", "--adapter", str(tmp_path / "a"), "--base", base, "--dst", str(tmp_path / "ok")]) == 0
