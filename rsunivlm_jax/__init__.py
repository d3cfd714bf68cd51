"""rsunivlm_jax: RSUniVLM (SigLIP -> mlp2x_gelu -> G-MoE Qwen2) in JAX/Flax NNX, pure-functional API.

    import rsunivlm_jax as rs
    config = rs.presets.get("tiny")
    graphdef, params = rs.init(config, rng=0)
    logits = rs.forward(graphdef, params, input_ids, pixel_values, granularity)
"""
from rsunivlm_jax import presets
from rsunivlm_jax.config import ConnectorConfig, DecoderConfig, GMoEConfig, ModelConfig, VisionConfig
from rsunivlm_jax.functional import (abstract_init, encode_images, forward, init, merge, param_count,
                                     param_specs, vision_features)
from rsunivlm_jax.router import route
from rsunivlm_jax.sharding import make_mesh

__version__ = "0.1.0"

__all__ = [
    "ConnectorConfig", "DecoderConfig", "GMoEConfig", "ModelConfig", "VisionConfig", "abstract_init",
    "encode_images", "forward", "init", "make_mesh", "merge", "param_count", "param_specs", "presets",
    "route", "vision_features",
]


def __getattr__(name):  # lazy heavy submodules
    if name == "tasks":
        import importlib
        return importlib.import_module("rsunivlm_jax.tasks")
    if name in ("generate", "load_pretrained"):
        import importlib
        mod = importlib.import_module("rsunivlm_jax.inference.generate" if name == "generate"
                                      else "rsunivlm_jax.checkpoint_io")
        return getattr(mod, name)
    raise AttributeError(name)
