"""Named model presets: `rsunivlm_jax.presets.get(name)`.

* ``rsunivlm-1b``: the released RSUniVLM checkpoint layout (docs/architecture.md).
* ``llava-onevision-0.5b``: the dense base model it was trained from (1 expert, tied head).
* ``tiny``: a few-layer model for tests and the CPU demo.
"""
from __future__ import annotations

from rsunivlm_jax.config import ConnectorConfig, DecoderConfig, GMoEConfig, ModelConfig, VisionConfig


def rsunivlm_1b() -> ModelConfig:
    return ModelConfig(
        vision=VisionConfig(),
        connector=ConnectorConfig(),
        decoder=DecoderConfig(tie_word_embeddings=False),
        gmoe=GMoEConfig(num_experts=3),
    )


def llava_onevision_0p5b() -> ModelConfig:
    return ModelConfig(
        decoder=DecoderConfig(tie_word_embeddings=True),
        gmoe=GMoEConfig(num_experts=1),
    )


def tiny() -> ModelConfig:
    """64x64 images in 8x8 patches (64 + 1 positions per image), 2+2 layers, width 64."""
    return ModelConfig(
        vision=VisionConfig(
            image_size=64, patch_size=8, hidden_size=64, intermediate_size=128,
            num_attention_heads=4, num_hidden_layers=2, num_layers_used=2,
        ),
        decoder=DecoderConfig(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
            max_position_embeddings=2048, tie_word_embeddings=False,
        ),
        gmoe=GMoEConfig(num_experts=3),
        image_token_id=511, pad_token_id=0, eos_token_ids=(1,), tokenizer_vocab_size=512,
    )


_PRESETS = {
    "rsunivlm-1b": rsunivlm_1b,
    "llava-onevision-0.5b": llava_onevision_0p5b,
    "tiny": tiny,
}


def names() -> list[str]:
    return sorted(_PRESETS)


def get(name: str, **overrides) -> ModelConfig:
    """Returns the preset `name`, optionally with `ModelConfig.replace` overrides."""
    if name not in _PRESETS:
        raise KeyError(f"unknown preset {name!r}; known presets: {names()}")
    config = _PRESETS[name]()
    return config.replace(**overrides) if overrides else config
