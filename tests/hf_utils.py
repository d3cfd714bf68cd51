"""Tiny transformers reference models and their configs in our format (parity tests)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rsunivlm_jax.config import ConnectorConfig, DecoderConfig, GMoEConfig, ModelConfig, VisionConfig  # noqa: E402

IMAGE_TOKEN = 199
VOCAB = 200


def qwen2_hf_config(tie=False, layers=2):
    return transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=512,
        tie_word_embeddings=tie, attn_implementation="eager", use_sliding_window=False)


def siglip_hf_config(layers=3):
    return transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4, image_size=32,
        patch_size=8, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", attn_implementation="eager",
        vision_use_head=False)


def our_config(hf_text, hf_vision=None, *, num_experts=1, layers_used=None, dispatch="grouped", tie=None):
    vision = VisionConfig()
    if hf_vision is not None:
        vision = VisionConfig(
            image_size=hf_vision.image_size, patch_size=hf_vision.patch_size, hidden_size=hf_vision.hidden_size,
            intermediate_size=hf_vision.intermediate_size, num_attention_heads=hf_vision.num_attention_heads,
            num_hidden_layers=hf_vision.num_hidden_layers,
            num_layers_used=layers_used or hf_vision.num_hidden_layers, layer_norm_eps=hf_vision.layer_norm_eps)
    else:
        vision = VisionConfig(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32,
                              num_attention_heads=2, num_hidden_layers=1, num_layers_used=1)
    decoder = DecoderConfig(
        vocab_size=hf_text.vocab_size, hidden_size=hf_text.hidden_size, intermediate_size=hf_text.intermediate_size,
        num_hidden_layers=hf_text.num_hidden_layers, num_attention_heads=hf_text.num_attention_heads,
        num_key_value_heads=hf_text.num_key_value_heads, rms_norm_eps=hf_text.rms_norm_eps,
        rope_theta=hf_text.rope_parameters["rope_theta"] if getattr(hf_text, "rope_parameters", None)
        else hf_text.rope_theta,
        tie_word_embeddings=hf_text.tie_word_embeddings if tie is None else tie)
    return ModelConfig(vision=vision, connector=ConnectorConfig(), decoder=decoder,
                       gmoe=GMoEConfig(num_experts=num_experts, dispatch=dispatch),
                       image_token_id=IMAGE_TOKEN, pad_token_id=0, eos_token_ids=(1,), tokenizer_vocab_size=VOCAB)


def to_np(t):
    return t.detach().to(torch.float32).numpy()


def qwen2_params(sd, prefix, num_layers, experts_sd=None, tie=False):
    """transformers Qwen2 state dict -> our `decoder` subtree (+ lm_head); experts_sd: list of per-expert dicts."""
    def stack(fmt, transpose):
        arrs = [to_np(sd[prefix + fmt.format(l=l)]) for l in range(num_layers)]
        return np.stack([a.T if transpose else a for a in arrs])

    def attn(name, bias=True):
        d = {"kernel": stack(f"layers.{{l}}.self_attn.{name}.weight", True)}
        if bias:
            d["bias"] = stack(f"layers.{{l}}.self_attn.{name}.bias", False)
        return d

    experts = experts_sd or [sd]
    mlp = {}
    for name in ("gate_proj", "up_proj", "down_proj"):
        per_e = [np.stack([to_np(e[prefix + f"layers.{l}.mlp.{name}.weight"]).T for l in range(num_layers)])
                 for e in experts]
        mlp[name] = {"kernel": np.stack(per_e, axis=1)}
    dec = {
        "embed_tokens": {"embedding": to_np(sd[prefix + "embed_tokens.weight"])},
        "layers": {
            "input_layernorm": {"scale": stack("layers.{l}.input_layernorm.weight", False)},
            "post_attention_layernorm": {"scale": stack("layers.{l}.post_attention_layernorm.weight", False)},
            "self_attn": {"q_proj": attn("q_proj"), "k_proj": attn("k_proj"), "v_proj": attn("v_proj"),
                          "o_proj": attn("o_proj", bias=False)},
            "mlp": mlp,
        },
        "norm": {"scale": to_np(sd[prefix + "norm.weight"])},
    }
    return dec


def siglip_params(sd, prefix, num_layers):
    def stack(fmt, transpose):
        arrs = [to_np(sd[prefix + fmt.format(l=l)]) for l in range(num_layers)]
        return np.stack([a.T if transpose else a for a in arrs])

    def lin(name):
        return {"kernel": stack(f"encoder.layers.{{l}}.{name}.weight", True),
                "bias": stack(f"encoder.layers.{{l}}.{name}.bias", False)}

    def ln(name):
        return {"scale": stack(f"encoder.layers.{{l}}.{name}.weight", False),
                "bias": stack(f"encoder.layers.{{l}}.{name}.bias", False)}

    return {
        "embeddings": {
            "patch_embedding": {"kernel": to_np(sd[prefix + "embeddings.patch_embedding.weight"]).transpose(2, 3, 1, 0),
                                "bias": to_np(sd[prefix + "embeddings.patch_embedding.bias"])},
            "position_embedding": {"embedding": to_np(sd[prefix + "embeddings.position_embedding.weight"])},
        },
        "layers": {
            "layer_norm1": ln("layer_norm1"), "layer_norm2": ln("layer_norm2"),
            "self_attn": {n: lin(f"self_attn.{n}") for n in ("q_proj", "k_proj", "v_proj", "out_proj")},
            "mlp": {"fc1": lin("mlp.fc1"), "fc2": lin("mlp.fc2")},
        },
        "post_layernorm": {"scale": to_np(sd[prefix + "post_layernorm.weight"]),
                           "bias": to_np(sd[prefix + "post_layernorm.bias"])},
    }


def fill(params, sub):
    """Copies numpy arrays from `sub` into the matching entries of the jax params tree (shape-checked)."""
    import jax.numpy as jnp

    def rec(dst, src, path):
        for k, v in src.items():
            if k not in dst:
                raise KeyError(f"{path}/{k} not in params")
            if isinstance(v, dict):
                rec(dst[k], v, f"{path}/{k}")
            else:
                if tuple(dst[k].shape) != tuple(v.shape):
                    raise ValueError(f"{path}/{k}: {dst[k].shape} vs {v.shape}")
                dst[k] = jnp.asarray(v)
    rec(params, sub, "")
    return params
