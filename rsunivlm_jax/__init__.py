"""rsunivlm_jax: RSUniVLM (SigLIP -> mlp2x_gelu -> G-MoE Qwen2) in JAX/Flax NNX, pure-functional API.

    import rsunivlm_jax as rs
    config = rs.presets.get("tiny")
    graphdef, params = rs.init(config, rng=0)
    logits = rs.forward(graphdef, params, input_ids, pixel_values, granularity)

Attributes are imported lazily so that data-loader worker processes (which import
`rsunivlm_jax.data`) do not pay for importing JAX and Flax.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "presets": ("rsunivlm_jax.presets", None),
    "tasks": ("rsunivlm_jax.tasks", None),
    "sharding": ("rsunivlm_jax.sharding", None),
    "functional": ("rsunivlm_jax.functional", None),
    "route": ("rsunivlm_jax.router", "route"),
    "make_mesh": ("rsunivlm_jax.sharding", "make_mesh"),
    "generate": ("rsunivlm_jax.inference.generate", "generate"),
    "load_pretrained": ("rsunivlm_jax.checkpoints", "load"),
    "checkpoints": ("rsunivlm_jax.checkpoints", None),
    **{name: ("rsunivlm_jax.config", name)
       for name in ("ModelConfig", "VisionConfig", "ConnectorConfig", "DecoderConfig", "GMoEConfig")},
    **{name: ("rsunivlm_jax.functional", name)
       for name in ("init", "abstract_init", "forward", "merge", "param_count", "param_specs",
                    "encode_images", "vision_features")},
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'rsunivlm_jax' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
