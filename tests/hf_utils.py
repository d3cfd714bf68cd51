"""Tiny transformers reference models, written to disk in each source key layout, and converted.

The parity tests (tests/test_model_parity.py) and the converter tests (tests/convert/) build
tiny random models with transformers, save them with safetensors in one exact key layout
(docs/architecture.md, section 5), convert them with `rsunivlm_jax.convert` and load them with
`rsunivlm_jax.checkpoints.load`.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

import torch  # the [test] extra installs torch and transformers
import transformers

from rsunivlm_jax import checkpoints  # noqa: E402
from rsunivlm_jax.config import DecoderConfig, VisionConfig  # noqa: E402

IMAGE_TOKEN = 199
VOCAB = 200
SO400M = "google/siglip-so400m-patch14-384"


def qwen2_hf_config(tie=False, layers=2, vocab=VOCAB):
    return transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=512,
        tie_word_embeddings=tie, attn_implementation="eager", use_sliding_window=False,
        pad_token_id=0, eos_token_id=1, bos_token_id=0)


def siglip_hf_config(layers=3, head=False):
    return transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4, image_size=32,
        patch_size=8, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", attn_implementation="eager",
        vision_use_head=head)


# Parts of a full model config that a text-only or vision-only parity check does not exercise.
TINY_VISION = VisionConfig(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                           num_hidden_layers=1, num_layers_used=1)
TINY_DECODER = DecoderConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, rope_theta=10000.0,
                             max_position_embeddings=256)


def to_np(t):
    return t.detach().to(torch.float32).numpy()


# ---- models ---------------------------------------------------------------------------------

def text_model(cfg, seed=0):
    torch.manual_seed(seed)
    return transformers.Qwen2ForCausalLM(cfg).eval()


def three_expert_text_refs(hf_cfg):
    """Three Qwen2ForCausalLM sharing everything but the MLPs: the G-MoE reference per granularity."""
    base = text_model(hf_cfg, seed=0)
    refs = [base]
    for seed in (1, 2):
        other = text_model(hf_cfg, seed=seed)
        m = copy.deepcopy(base)
        for layer, src in zip(m.model.layers, other.model.layers):
            layer.mlp.load_state_dict(src.mlp.state_dict())
        refs.append(m)
    return refs


def llava_ov(seed=0, *, tie=True, vocab=VOCAB, vision_layers=2, feature_layer=-1, head=False, text_layers=2):
    """transformers LlavaOnevisionForConditionalGeneration (5.x) in the RSUniVLM base-view setting."""
    text = qwen2_hf_config(tie=tie, vocab=vocab, layers=text_layers)
    vision = siglip_hf_config(layers=vision_layers, head=head)
    cfg = transformers.LlavaOnevisionConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_index=IMAGE_TOKEN,
        video_token_index=IMAGE_TOKEN - 1, vision_feature_layer=feature_layer, vision_feature_select_strategy="full",
        image_grid_pinpoints=[[32, 32]], projector_hidden_act="gelu", multimodal_projector_bias=True,
        tie_word_embeddings=tie)
    cfg.vision_config.vision_use_head = head
    torch.manual_seed(seed)
    model = transformers.LlavaOnevisionForConditionalGeneration(cfg).eval()
    return model, text, vision


def llava_ov_experts(tie=False, **kw):
    """Three LLaVA-OV models sharing everything but the decoder MLPs (G-MoE reference per expert)."""
    base, text, vision = llava_ov(0, tie=tie, **kw)
    refs = [base]
    for seed in (1, 2):
        other, _, _ = llava_ov(seed, tie=tie, **kw)
        m = copy.deepcopy(base)
        for layer, src in zip(m.model.language_model.layers, other.model.language_model.layers):
            layer.mlp.load_state_dict(src.mlp.state_dict())
        refs.append(m)
    return refs, text, vision


def llava_inputs(num_images, seed=3, per_image=(32 // 8) ** 2 + 1):
    """(our input_ids [1, T], transformers input_ids [1, L], pixels [N, S, S, 3]) for a base-view request."""
    rng = np.random.default_rng(seed)
    pre = rng.integers(2, 150, 4).tolist()
    post = rng.integers(2, 150, 6).tolist()
    gap = [int(rng.integers(2, 150))]
    placeholders = [IMAGE_TOKEN] + (gap + [IMAGE_TOKEN] if num_images == 2 else [])
    ours = np.array([pre + placeholders + post], np.int32)
    hf = pre + [IMAGE_TOKEN] * per_image + (gap + [IMAGE_TOKEN] * per_image if num_images == 2 else []) + post
    pixels = rng.uniform(-1, 1, (num_images, 32, 32, 3)).astype(np.float32)
    return ours, np.array([hf]), pixels


def llava_ref_logits(model, hf_ids, pixels):
    """Reference logits: batch_num_images=[2] selects the base view + one image_newline per image (the
    RSUniVLM layout); for one image it makes transformers skip AnyRes tiling."""
    n = pixels.shape[0]
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(hf_ids).long(),
                    pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))[:, None],
                    image_sizes=torch.tensor([[32, 32]] * n), batch_num_images=torch.tensor([2]))
    return to_np(out.logits)


# ---- writing checkpoints --------------------------------------------------------------------

def write_checkpoint(directory, tensors: dict, config: dict, *, shards: int = 1, dtype=None,
                     generation_config: dict | None = None) -> Path:
    """safetensors (one file, or `shards` files + model.safetensors.index.json) + config.json."""
    from safetensors.torch import save_file
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.detach().to(dtype) if dtype is not None else v.detach()).contiguous().clone()
               for k, v in tensors.items()}
    if shards == 1:
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    else:
        keys = sorted(tensors)
        chunks = [keys[i::shards] for i in range(shards)]
        weight_map = {}
        for i, chunk in enumerate(chunks):
            name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: tensors[k] for k in chunk}, str(d / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in chunk})
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps(config, indent=2))
    if generation_config is not None:
        (d / "generation_config.json").write_text(json.dumps(generation_config))
    return d


def save_hf(model, directory) -> Path:
    """transformers `save_pretrained` (5.x file layout)."""
    model.save_pretrained(str(directory))
    return Path(directory)


def rename(sd: dict, table) -> dict:
    """Renames keys by the first matching (old_prefix, new_prefix); None drops the key."""
    out = {}
    for k, v in sd.items():
        for old, new in table:
            if k.startswith(old):
                if new is not None:
                    out[new + k[len(old):]] = v
                break
        else:
            out[k] = v
    return out


def qwen2_fields(text) -> dict:
    """Top-level Qwen2 entries of a LLaVA-NeXT config.json, from a transformers Qwen2Config."""
    d = text.to_dict()
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "hidden_act", "use_sliding_window",
            "tie_word_embeddings", "pad_token_id", "eos_token_id", "bos_token_id")
    out = {k: d[k] for k in keep if k in d}
    out["rope_theta"] = (d.get("rope_parameters") or {}).get("rope_theta", d.get("rope_theta"))
    return out


def llava_next_tensors(models, *, experts: bool, inv_freq: bool = False) -> dict:
    """RSUniVLM / LLaVA-NeXT keys from transformers 5.x LlavaOnevision models.

    experts=True: `model.layers.{i}.mlp.{e}.*` from models[e]; else the dense MLPs of models[0].
    Everything else comes from models[0]; no `lm_head.weight` when its config ties the head.
    """
    sd = models[0].state_dict()
    table = [("model.language_model.", "model."), ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
             ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
             ("model.multi_modal_projector.linear_2.", "model.mm_projector.2.")]
    out = rename(sd, table)
    if models[0].config.text_config.tie_word_embeddings:
        out.pop("lm_head.weight")
    if experts:
        n_layers = models[0].config.text_config.num_hidden_layers
        for i in range(n_layers):
            for name in ("gate_proj", "up_proj", "down_proj"):
                out.pop(f"model.layers.{i}.mlp.{name}.weight")
                for e, m in enumerate(models):
                    out[f"model.layers.{i}.mlp.{e}.{name}.weight"] = m.state_dict()[
                        f"model.language_model.layers.{i}.mlp.{name}.weight"]
    if inv_freq:  # older checkpoints carry the rotary buffer
        out["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.arange(4, dtype=torch.float32)
    return out


def llava_next_config(text, vision, *, num_experts: int | None, stored_blocks: int) -> dict:
    """config.json of the LLaVA-NeXT code base (`llava_qwen_gmoe` / `llava_qwen`).

    The tower is described by `vision_config` with one block more than stored and
    `mm_vision_select_layer=-2`, like RSUniVLM's 27-block so400m truncated to 26.
    """
    vdict = {k: v for k, v in vision.to_dict().items() if k in (
        "hidden_size", "intermediate_size", "num_attention_heads", "image_size", "patch_size", "layer_norm_eps",
        "hidden_act", "num_channels")}
    vdict.update(num_hidden_layers=stored_blocks + 1, model_type="siglip_vision_model")
    cfg = dict(architectures=["LlavaQwenGMoEForCausalLM" if num_experts else "LlavaQwenForCausalLM"],
               model_type="llava_qwen_gmoe" if num_experts else "llava_qwen", **qwen2_fields(text),
               image_token_index=IMAGE_TOKEN, mm_vision_tower=SO400M, vision_config=vdict, mm_vision_select_layer=-2,
               mm_vision_select_feature="patch", mm_projector_type="mlp2x_gelu", mm_hidden_size=vision.hidden_size,
               mm_patch_merge_type="spatial_unpad", image_aspect_ratio="square", mm_resampler_type=None)
    return cfg


HF_SPELLINGS = {
    # transformers 5.x in-memory names -> each stored / in-memory spelling
    "hf_hub": [("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
               ("model.vision_tower.", "vision_tower.vision_model."), ("model.multi_modal_projector.",
                                                                       "multi_modal_projector."),
               ("model.image_newline", "image_newline")],
    "hf_saved_5x": [("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                    ("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector."),
                    ("model.image_newline", "image_newline")],
    "hf_memory_4x": [("model.vision_tower.", "model.vision_tower.vision_model.")],
    "hf_memory_5x": [],
}


def hf_tensors(model, spelling: str) -> dict:
    sd = dict(model.state_dict())
    if model.config.text_config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    return rename(sd, HF_SPELLINGS[spelling])


def hf_config_dict(model) -> dict:
    return model.config.to_dict()


# ---- converting -----------------------------------------------------------------------------

def convert(src, dst, **kwargs) -> "checkpoints.Checkpoint":
    """Converts with rsunivlm_jax.convert and loads the result."""
    from rsunivlm_jax.convert.convert import convert as run
    run(src, dst, **kwargs)
    return checkpoints.load(dst)
