"""Each source layout: tiny random checkpoint written in that exact key layout -> convert -> load
-> forward; logits match the PyTorch reference (float32, <= 1e-4)."""
import jax.numpy as jnp
import numpy as np
import pytest

from tests import hf_utils as H

torch = H.torch
transformers = H.transformers
import rsunivlm_jax as rs  # noqa: E402
from rsunivlm_jax import checkpoints  # noqa: E402

pytestmark = pytest.mark.torch
TOL = 1e-4


def _forward(pre, ids, pixels, g):
    return np.asarray(rs.forward(pre.graphdef, pre.params, jnp.asarray(ids), jnp.asarray(pixels)[None],
                                 jnp.full((1,), g, jnp.int32)))


def test_rsunivlm_layout_three_different_experts(gmoe):
    refs, _, _, pre = gmoe
    meta = pre.meta
    assert meta["source"]["layout"] == "llava_next" and meta["experts"] == {
        "source": 3, "num_experts": 3, "upcycled": False}
    assert meta["lm_head"] == "stored" and pre.parts == ("vision", "connector", "decoder", "lm_head")
    assert meta["ignored_tensors"] == {"model.layers.0.self_attn.rotary_emb.inv_freq":
                                       "rotary inv_freq buffer (recomputed from rope_theta)"}
    assert meta["vision"]["tower_depth"] == 3 and pre.config.vision.num_hidden_layers == 2  # select_layer -2
    assert pre.config.eos_token_ids == (1, 0)  # generation_config.json wins
    ours_ids, hf_ids, pixels = H.llava_inputs(2)
    ref = [H.llava_ref_logits(m, hf_ids, pixels) for m in refs]
    assert np.abs(ref[0] - ref[1]).max() > 1e-3 and np.abs(ref[1] - ref[2]).max() > 1e-3  # experts differ
    for g in range(3):
        ours = _forward(pre, ours_ids, pixels, g)
        assert ours.shape == ref[g].shape
        assert np.abs(ours - ref[g]).max() <= TOL, g


def test_llava_ov_original_dense_tied_upcycled_equals_dense_reference(dense, tmp_path):
    model, _, src, = dense
    pre = H.convert(src, tmp_path / "dst", upcycle_experts=3)
    assert pre.meta["experts"] == {"source": "dense", "num_experts": 3, "upcycled": True}
    assert pre.parts == ("vision", "connector", "decoder") and pre.config.decoder.tie_word_embeddings
    gate = np.asarray(pre.params["decoder"]["layers"]["mlp"]["gate_proj"]["kernel"])
    assert gate.shape[1] == 3 and np.array_equal(gate[:, 0], gate[:, 2])
    ours_ids, hf_ids, pixels = H.llava_inputs(1)
    ref = H.llava_ref_logits(model, hf_ids, pixels)
    for g in range(3):
        assert np.abs(_forward(pre, ours_ids, pixels, g) - ref).max() <= TOL, g


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """transformers llava_onevision, vocabulary 200 real tokens padded to 256 rows (like 151938 -> 152000),
    a 3-block tower used up to vision_feature_layer=-2, and the SigLIP head present (ignored)."""
    model, _, _ = H.llava_ov(11, tie=False, vocab=256, vision_layers=3, feature_layer=-2, head=True)
    return model, tmp_path_factory.mktemp("padded")


@pytest.mark.parametrize("spelling", ["hf_hub", "hf_memory_5x"])
@pytest.mark.parametrize("rows", ["keep", "tokenizer"])
def test_transformers_layouts_with_padded_vocabulary(padded, spelling, rows):
    model, root = padded
    src = root / f"src_{spelling}"
    if not src.exists():
        H.write_checkpoint(src, H.hf_tensors(model, spelling), H.hf_config_dict(model))
    pre = H.convert(src, root / f"dst_{spelling}_{rows}", vocab_rows=rows)
    vocab = pre.meta["vocabulary"]
    assert pre.meta["source"]["layout"] == spelling
    assert vocab["source_rows"] == 256 and vocab["tokenizer_size"] == 200  # image token 199 is the last real one
    assert vocab["kept_rows"] == (256 if rows == "keep" else 200)
    assert vocab["mode"] == ("keep" if rows == "keep" else "trim")
    assert pre.config.decoder.vocab_size == vocab["kept_rows"]
    assert any(k.endswith("head.attention.in_proj_weight") for k in pre.meta["ignored_tensors"])
    assert any("SigLIP block 2 dropped" in why for why in pre.meta["ignored_tensors"].values())
    ours_ids, hf_ids, pixels = H.llava_inputs(2)
    ref = H.llava_ref_logits(model, hf_ids, pixels)
    ours = _forward(pre, ours_ids, pixels, 0)
    assert ours.shape[-1] == vocab["kept_rows"]
    assert np.abs(ours[..., :200] - ref[..., :200]).max() <= TOL  # real-token logits unchanged


@pytest.mark.parametrize("spelling", ["hf_saved_5x", "hf_memory_4x"])
def test_other_transformers_spellings_give_identical_params(padded, spelling):
    model, root = padded
    hub = H.convert(H.write_checkpoint(root / f"src_hub_for_{spelling}", H.hf_tensors(model, "hf_hub"),
                                       H.hf_config_dict(model)), root / f"dst_hub_for_{spelling}")
    if spelling == "hf_saved_5x":
        src = H.save_hf(model, root / "src_saved")
    else:
        src = H.write_checkpoint(root / f"src_{spelling}", H.hf_tensors(model, spelling), H.hf_config_dict(model))
    pre = H.convert(src, root / f"dst_{spelling}")
    assert pre.meta["source"]["layout"] == spelling
    assert pre.config == hub.config
    for a, b in zip(leaves(pre.params), leaves(hub.params)):
        assert a[0] == b[0] and np.array_equal(a[1], b[1]), a[0]


def leaves(tree, prefix=""):
    out = []
    for k in sorted(tree):
        v = tree[k]
        out += leaves(v, f"{prefix}{k}/") if isinstance(v, dict) else [(prefix + k, np.asarray(v))]
    return out


def test_transformers_names_with_proposed_expert_spelling(gmoe, tmp_path):
    """HF-style expert naming: model.language_model.layers.{i}.mlp.experts.{e}.* in the 5.x spelling."""
    refs, tensors, _, pre = gmoe
    back = [("model.layers.", "model.language_model.layers."), ("model.embed_tokens.", "model.language_model.embed_tokens."),
            ("model.norm.", "model.language_model.norm."),
            ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower."),
            ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
            ("model.mm_projector.2.", "model.multi_modal_projector.linear_2.")]
    hf = {k.replace(".mlp.", ".mlp.experts.") if k.startswith("model.language_model.") else k: v
          for k, v in H.rename(tensors, back).items()}
    out = H.convert(H.write_checkpoint(tmp_path / "src", hf, H.hf_config_dict(refs[0])), tmp_path / "dst")
    assert out.meta["source"]["layout"] == "hf_memory_5x" and out.config.gmoe.num_experts == 3
    assert out.config.vision == pre.config.vision and out.config.decoder == pre.config.decoder
    for a, b in zip(leaves(out.params), leaves(pre.params)):
        assert a[0] == b[0] and np.array_equal(a[1], b[1]), a[0]


def test_sharded_index_equals_single_file(gmoe, tmp_path):
    _, tensors, src, pre = gmoe
    import json
    cfg = json.loads((src / "config.json").read_text())
    sharded = H.write_checkpoint(tmp_path / "src", tensors, cfg, shards=3,
                                 generation_config={"eos_token_id": [1, 0]})
    assert (sharded / "model.safetensors.index.json").is_file() and not (sharded / "model.safetensors").exists()
    out = H.convert(sharded, tmp_path / "dst")
    assert out.config == pre.config
    assert len(out.meta["source"]["files"]) == 4  # 3 shards + index, each with a sha256
    assert all(len(f["sha256"]) == 64 for f in out.meta["source"]["files"])
    for a, b in zip(leaves(out.params), leaves(pre.params)):
        assert a[0] == b[0] and np.array_equal(a[1], b[1]), a[0]


def test_bare_qwen2_upcycled_and_headless_model(tmp_path):
    hf_cfg = H.qwen2_hf_config(tie=False)
    hf = H.text_model(hf_cfg, seed=4)
    pre = H.convert(H.save_hf(hf, tmp_path / "src"), tmp_path / "dst", upcycle_experts=2)
    assert pre.meta["source"]["layout"] == "qwen2" and pre.parts == ("decoder", "lm_head")
    up = np.asarray(pre.params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"])
    want = np.stack([H.to_np(hf.model.layers[i].mlp.up_proj.weight).T for i in range(2)])
    assert np.array_equal(up[:, 0], want) and np.array_equal(up[:, 1], want)
    # Qwen2Model (no head) spelling: tied, one part
    sd = {k.removeprefix("model."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    cfg = hf_cfg.to_dict()
    src2 = H.write_checkpoint(tmp_path / "src2", sd, cfg)
    pre2 = H.convert(src2, tmp_path / "dst2")
    assert pre2.meta["source"]["layout"] == "qwen2_model" and pre2.parts == ("decoder",)
    assert pre2.config.decoder.tie_word_embeddings
    ids = np.random.default_rng(1).integers(2, H.VOCAB - 2, (1, 7)).astype(np.int32)
    with torch.no_grad():
        ref = H.to_np(hf(torch.from_numpy(ids).long()).logits)
    graphdef, params = checkpoints.assemble(pre.config.replace(vision=H.TINY_VISION, image_token_id=H.IMAGE_TOKEN), pre)
    for g in range(2):
        ours = np.asarray(rs.forward(graphdef, params, jnp.asarray(ids), None, jnp.full((1,), g, jnp.int32)))
        assert np.abs(ours - ref).max() <= TOL


def test_bare_siglip_model_with_text_tower_ignored(tmp_path):
    """SiglipModel-style checkpoint (vision_model.*, text_model.*, logit_scale): the vision part converts."""
    vcfg = H.siglip_hf_config(layers=2)
    torch.manual_seed(3)
    hf = transformers.SiglipVisionModel(vcfg).eval()
    tensors = {"vision_model." + k.removeprefix("vision_model."): v for k, v in hf.state_dict().items()}
    tensors.update({"text_model.embeddings.token_embedding.weight": torch.zeros(8, 4),
                    "logit_scale": torch.zeros(1), "logit_bias": torch.zeros(1)})
    config = {"model_type": "siglip", "vision_config": vcfg.to_dict(), "text_config": {}}
    pre = H.convert(H.write_checkpoint(tmp_path / "src", tensors, config), tmp_path / "dst")
    assert pre.meta["source"]["layout"] == "siglip_vision_model" and pre.parts == ("vision",)
    assert set(pre.meta["ignored_tensors"]) == {"text_model.embeddings.token_embedding.weight", "logit_scale",
                                                "logit_bias"}
    graphdef, params = checkpoints.assemble(pre.config.replace(decoder=H.TINY_DECODER, image_token_id=63), pre)
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        ref = H.to_np(hf(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)),
                         output_hidden_states=True).hidden_states[-1])
    ours = np.asarray(rs.vision_features(graphdef, params, jnp.asarray(pixels)))
    assert np.abs(ours - ref).max() <= 1e-5
