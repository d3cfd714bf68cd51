"""Float32 parity against transformers (CPU, eager attention, highest matmul precision)."""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import hf_utils as H

torch = H.torch
transformers = H.transformers
import rsunivlm_jax as rs  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def _highest():
    with jax.default_matmul_precision("highest"):
        yield


def _text_model(cfg, seed=0):
    torch.manual_seed(seed)
    return transformers.Qwen2ForCausalLM(cfg).eval()


def _our_text(hf_cfg, hf_models, *, dispatch="grouped"):
    """Our model with decoder weights from hf_models[0] and experts from each hf model's MLPs."""
    cfg = H.our_config(hf_cfg, num_experts=len(hf_models), dispatch=dispatch)
    graphdef, params = rs.init(cfg, 0)
    sds = [m.state_dict() for m in hf_models]
    dec = H.qwen2_params(sds[0], "model.", hf_cfg.num_hidden_layers, experts_sd=sds)
    H.fill(params, {"decoder": dec})
    if not hf_cfg.tie_word_embeddings:
        H.fill(params, {"lm_head": {"kernel": H.to_np(sds[0]["lm_head.weight"]).T}})
    return graphdef, params


def test_siglip_truncated_tower_matches_transformers():
    vcfg = H.siglip_hf_config(layers=3)
    torch.manual_seed(0)
    hf = transformers.SiglipVisionModel(vcfg).eval()
    cfg = H.our_config(H.qwen2_hf_config(), vcfg, layers_used=2)
    graphdef, params = rs.init(cfg, 0)
    H.fill(params, {"vision": H.siglip_params(hf.state_dict(), "vision_model." if any(
        k.startswith("vision_model.") for k in hf.state_dict()) else "", 3)})
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)), output_hidden_states=True)
    ref = H.to_np(out.hidden_states[2])  # after block 2 of 3, before post_layernorm
    ours = np.asarray(rs.vision_features(graphdef, params, jnp.asarray(pixels)))
    assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize("tie", [False, True])
def test_qwen2_logits_match_transformers(tie):
    hf_cfg = H.qwen2_hf_config(tie=tie)
    hf = _text_model(hf_cfg)
    graphdef, params = _our_text(hf_cfg, [hf])
    ids = np.random.default_rng(1).integers(2, H.VOCAB - 2, (2, 11)).astype(np.int32)
    with torch.no_grad():
        ref = H.to_np(hf(torch.from_numpy(ids).long()).logits)
    ours = np.asarray(rs.forward(graphdef, params, jnp.asarray(ids), None, jnp.zeros(2, jnp.int32)))
    assert np.abs(ours - ref).max() <= 1e-4


def _three_expert_refs(hf_cfg):
    """Three Qwen2ForCausalLM sharing everything but the MLPs: the G-MoE reference per granularity."""
    base = _text_model(hf_cfg, seed=0)
    refs = [base]
    for seed in (1, 2):
        other = _text_model(hf_cfg, seed=seed)
        m = copy.deepcopy(base)
        for layer, src in zip(m.model.layers, other.model.layers):
            layer.mlp.load_state_dict(src.mlp.state_dict())
        refs.append(m)
    return refs


@pytest.mark.parametrize("dispatch", ["grouped", "dense_mask"])
def test_gmoe_matches_per_expert_reference(dispatch):
    hf_cfg = H.qwen2_hf_config()
    refs = _three_expert_refs(hf_cfg)
    graphdef, params = _our_text(hf_cfg, refs, dispatch=dispatch)
    ids = np.random.default_rng(2).integers(2, H.VOCAB - 2, (3, 9)).astype(np.int32)
    with torch.no_grad():
        ref = [H.to_np(r(torch.from_numpy(ids).long()).logits) for r in refs]
    assert np.abs(ref[0] - ref[1]).max() > 1e-3  # experts really differ
    for g in range(3):
        ours = np.asarray(rs.forward(graphdef, params, jnp.asarray(ids), None, jnp.full((3,), g, jnp.int32)))
        assert np.abs(ours - ref[g]).max() <= 1e-4, g
    if dispatch == "dense_mask":  # mixed batch: row b uses expert b
        ours = np.asarray(rs.forward(graphdef, params, jnp.asarray(ids), None, jnp.arange(3, dtype=jnp.int32)))
        for b in range(3):
            assert np.abs(ours[b] - ref[b][b]).max() <= 1e-4, b


def _llava_ov(seed=0):
    text = H.qwen2_hf_config(tie=True)
    vision = H.siglip_hf_config(layers=2)
    cfg = transformers.LlavaOnevisionConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_index=H.IMAGE_TOKEN,
        video_token_index=H.IMAGE_TOKEN - 1, vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_grid_pinpoints=[[32, 32]], projector_hidden_act="gelu", multimodal_projector_bias=True,
        tie_word_embeddings=True)
    cfg.vision_config.vision_use_head = False
    torch.manual_seed(seed)
    model = transformers.LlavaOnevisionForConditionalGeneration(cfg).eval()
    return model, text, vision


def _our_from_llava(model, text, vision):
    cfg = H.our_config(text, vision, num_experts=1, tie=True)
    graphdef, params = rs.init(cfg, 0)
    sd = model.state_dict()
    vt_prefix = "model.vision_tower.vision_model." if any(
        k.startswith("model.vision_tower.vision_model.") for k in sd) else "model.vision_tower."
    H.fill(params, {
        "decoder": H.qwen2_params(sd, "model.language_model.", text.num_hidden_layers),
        "vision": H.siglip_params(sd, vt_prefix, vision.num_hidden_layers),
        "connector": {
            "linear_1": {"kernel": H.to_np(sd["model.multi_modal_projector.linear_1.weight"]).T,
                         "bias": H.to_np(sd["model.multi_modal_projector.linear_1.bias"])},
            "linear_2": {"kernel": H.to_np(sd["model.multi_modal_projector.linear_2.weight"]).T,
                         "bias": H.to_np(sd["model.multi_modal_projector.linear_2.bias"])},
            "image_newline": H.to_np(sd["model.image_newline"])},
    })
    return graphdef, params


@pytest.mark.parametrize("num_images", [1, 2])
def test_llava_onevision_base_view_matches_ours(num_images):
    model, text, vision = _llava_ov()
    graphdef, params = _our_from_llava(model, text, vision)
    per_image = (32 // 8) ** 2 + 1
    rng = np.random.default_rng(3)
    pre = rng.integers(2, 150, 4).tolist()
    post = rng.integers(2, 150, 6).tolist()
    gap = [int(rng.integers(2, 150))]
    placeholders = [H.IMAGE_TOKEN] + (gap + [H.IMAGE_TOKEN] if num_images == 2 else [])
    ours_ids = np.array([pre + placeholders + post], np.int32)
    hf_ids = pre + [H.IMAGE_TOKEN] * per_image + (gap + [H.IMAGE_TOKEN] * per_image if num_images == 2 else []) + post
    pixels = rng.uniform(-1, 1, (num_images, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        # batch_num_images != [1] selects the base view + one image_newline per image (the RSUniVLM layout);
        # for one image we pass [2] so transformers skips AnyRes tiling (see SPEC 9.2).
        ref = H.to_np(model(
            input_ids=torch.tensor([hf_ids]), pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))[:, None],
            image_sizes=torch.tensor([[32, 32]] * num_images), batch_num_images=torch.tensor([2])).logits)
    ours = np.asarray(rs.forward(graphdef, params, jnp.asarray(ours_ids), jnp.asarray(pixels)[None],
                                 jnp.zeros(1, jnp.int32)))
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4
