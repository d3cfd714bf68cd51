"""Float32 parity against transformers (CPU, eager attention, highest matmul precision).

Weights reach our model only through the converter: each reference is saved in a PyTorch key
layout, converted with `rsunivlm_jax.convert` and loaded with `checkpoints.load`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import hf_utils as H

torch = H.torch
transformers = H.transformers
import rsunivlm_jax as rs  # noqa: E402
from rsunivlm_jax import checkpoints  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def _highest():
    with jax.default_matmul_precision("highest"):
        yield


def _text_only(pre, **replace):
    """Full model = converted decoder (+ head) + a tiny random vision tower that text-only inputs never use."""
    cfg = pre.config.replace(vision=H.TINY_VISION, image_token_id=H.IMAGE_TOKEN, **replace)
    return checkpoints.assemble(cfg, pre)


def _our_text(tmp_path, hf_cfg, hf_models, *, dispatch="auto"):
    """Our model from hf_models[0]'s decoder with one expert per hf model's MLPs, via the converter.

    One model: a bare Qwen2 checkpoint (save_pretrained). Several: the RSUniVLM layout with
    `model.layers.{i}.mlp.{e}.*` experts (plus a random tiny SigLIP and projector).
    """
    if len(hf_models) == 1:
        pre = H.convert(H.save_hf(hf_models[0], tmp_path / "src"), tmp_path / "dst")
    else:
        sds = [m.state_dict() for m in hf_models]
        tensors = {k: v for k, v in sds[0].items() if ".mlp." not in k}
        for i in range(hf_cfg.num_hidden_layers):
            for e, sd in enumerate(sds):
                for name in ("gate_proj", "up_proj", "down_proj"):
                    tensors[f"model.layers.{i}.mlp.{e}.{name}.weight"] = sd[f"model.layers.{i}.mlp.{name}.weight"]
        vision = H.siglip_hf_config(layers=1)
        torch.manual_seed(5)
        sig = transformers.SiglipVisionModel(vision)
        tensors.update({"model.vision_tower.vision_tower.vision_model." + k.removeprefix("vision_model."): v
                        for k, v in sig.state_dict().items()})
        for i, (n_in, n_out) in ((0, (vision.hidden_size, hf_cfg.hidden_size)), (2, (hf_cfg.hidden_size,) * 2)):
            lin = torch.nn.Linear(n_in, n_out)
            tensors[f"model.mm_projector.{i}.weight"], tensors[f"model.mm_projector.{i}.bias"] = lin.weight, lin.bias
        tensors["model.image_newline"] = torch.randn(hf_cfg.hidden_size)
        cfg = H.llava_next_config(hf_cfg, vision, num_experts=len(hf_models), stored_blocks=1)
        pre = H.convert(H.write_checkpoint(tmp_path / "src", tensors, cfg), tmp_path / "dst")
        assert pre.config.gmoe.num_experts == len(hf_models)
    cfg = pre.config.replace(image_token_id=H.IMAGE_TOKEN, gmoe_dispatch=dispatch)
    if "vision" in pre.parts:
        graphdef, _ = rs.abstract_init(cfg)
        return graphdef, pre.params
    return _text_only(pre, gmoe_dispatch=dispatch)


def test_siglip_truncated_tower_matches_transformers(tmp_path):
    vcfg = H.siglip_hf_config(layers=3)
    torch.manual_seed(0)
    hf = transformers.SiglipVisionModel(vcfg).eval()
    # bare SigLIP checkpoint; keep 2 of its 3 blocks (the third is dropped by the converter)
    pre = H.convert(H.save_hf(hf, tmp_path / "src"), tmp_path / "dst", vision_layers=2)
    assert pre.parts == ("vision",) and pre.config.vision.num_hidden_layers == 2
    graphdef, params = checkpoints.assemble(pre.config.replace(decoder=H.TINY_DECODER, image_token_id=63), pre)
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)), output_hidden_states=True)
    ref = H.to_np(out.hidden_states[2])  # after block 2 of 3, before post_layernorm
    ours = np.asarray(rs.vision_features(graphdef, params, jnp.asarray(pixels)))
    assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize("tie", [False, True])
def test_qwen2_logits_match_transformers(tmp_path, tie):
    hf_cfg = H.qwen2_hf_config(tie=tie)
    hf = H.text_model(hf_cfg)
    graphdef, params = _our_text(tmp_path, hf_cfg, [hf])
    ids = np.random.default_rng(1).integers(2, H.VOCAB - 2, (2, 11)).astype(np.int32)
    with torch.no_grad():
        ref = H.to_np(hf(torch.from_numpy(ids).long()).logits)
    ours = np.asarray(rs.forward(graphdef, params, jnp.asarray(ids), None, jnp.zeros(2, jnp.int32)))
    assert np.abs(ours - ref).max() <= 1e-4


@pytest.mark.parametrize("dispatch", ["auto", "dense_mask", "ragged", "gather"])
def test_gmoe_matches_per_expert_reference(tmp_path, dispatch):
    hf_cfg = H.qwen2_hf_config()
    refs = H.three_expert_text_refs(hf_cfg)
    graphdef, params = _our_text(tmp_path, hf_cfg, refs, dispatch=dispatch)
    ids = np.random.default_rng(2).integers(2, H.VOCAB - 2, (3, 9)).astype(np.int32)
    with torch.no_grad():
        ref = [H.to_np(r(torch.from_numpy(ids).long()).logits) for r in refs]
    assert np.abs(ref[0] - ref[1]).max() > 1e-3  # experts really differ
    for g in range(3):
        ours = np.asarray(rs.forward(graphdef, params, jnp.asarray(ids), None, jnp.full((3,), g, jnp.int32)))
        assert np.abs(ours - ref[g]).max() <= 1e-4, g
    for order in ([0, 1, 2], [2, 0, 1], [1, 1, 0]):  # mixed batches: row b uses expert order[b]
        ours = np.asarray(rs.forward(graphdef, params, jnp.asarray(ids), None, jnp.asarray(order, jnp.int32)))
        for b, g in enumerate(order):
            assert np.abs(ours[b] - ref[g][b]).max() <= 1e-4, (order, b)


@pytest.fixture(scope="module")
def llava_converted(tmp_path_factory):
    """A tiny LLaVA-OneVision saved by transformers' save_pretrained, converted."""
    model, _, _ = H.llava_ov()
    d = tmp_path_factory.mktemp("llava")
    pre = H.convert(H.save_hf(model, d / "src"), d / "dst")
    assert pre.meta["source"]["layout"] == "hf_saved_5x"
    return model, pre


@pytest.mark.parametrize("num_images", [1, 2])
def test_llava_onevision_base_view_matches_ours(llava_converted, num_images):
    model, pre = llava_converted
    ours_ids, hf_ids, pixels = H.llava_inputs(num_images)
    ref = H.llava_ref_logits(model, hf_ids, pixels)
    ours = np.asarray(rs.forward(pre.graphdef, pre.params, jnp.asarray(ours_ids), jnp.asarray(pixels)[None],
                                 jnp.zeros(1, jnp.int32)))
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4
