"""Model hyper-parameters as frozen dataclasses (hashable, usable as static jit args).

Field names follow the Hugging Face config names where one exists (`hidden_size`,
`num_attention_heads`, ...), so `rsunivlm_jax/convert` maps `config.json` onto them directly.
Experiment settings (optimiser, data, mesh) live in ml-collections configs under `configs/`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

DISPATCH_MODES = ("auto", "dense_mask", "ragged", "gather")  # see rsunivlm_jax.routing
REMAT_POLICIES = ("none", "full", "dots", "dots_all")  # rsunivlm_jax.layers.scan.REMAT
RUNTIME_FIELDS = ("dtype", "remat_policy", "attention_causal_blocks", "gmoe_dispatch")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """SigLIP vision tower (transformers `SiglipVisionConfig`)."""

    image_size: int = 384
    patch_size: int = 14
    num_channels: int = 3
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_attention_heads: int = 16
    num_hidden_layers: int = 26  # blocks stored in the parameter tree
    num_layers_used: int = 26  # blocks run by the forward pass (<= num_hidden_layers)
    layer_norm_eps: float = 1e-6
    use_post_layernorm: bool = False  # RSUniVLM takes features before post-LN
    hidden_act: str = "gelu_pytorch_tanh"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class ConnectorConfig:
    """`mlp2x_gelu` projector (LLaVA `mm_projector`) plus the learned `image_newline`."""

    hidden_act: str = "gelu"  # exact erf GELU, unlike SigLIP's tanh form
    use_image_newline: bool = True


@dataclasses.dataclass(frozen=True)
class GMoEConfig:
    """Granularity-oriented MoE: E stacked SwiGLU experts per layer (E=1 = dense)."""

    num_experts: int = 3


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How the model computes. Nothing here changes the parameters, so a checkpoint's identity
    (`ModelConfig.architecture()`) leaves it out and any of it may change between runs."""

    dtype: str = "float32"  # compute dtype; norms, softmax and logits stay float32
    remat_policy: str = "none"
    # Decoder self-attention in this many causal query blocks, each over the keys up to its end
    # (the masked upper triangle is skipped; same values). The decoder mask must be lower-triangular,
    # as transformers' Qwen2 always makes it; 1 computes the full square and honours any mask.
    attention_causal_blocks: int = 2
    gmoe_dispatch: str = "auto"  # G-MoE strategy for mixed batches (rsunivlm_jax.routing)


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Qwen2 decoder (transformers `Qwen2Config`)."""

    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The whole RSUniVLM model: vision tower -> connector -> G-MoE Qwen2 decoder."""

    vision: VisionConfig = VisionConfig()
    connector: ConnectorConfig = ConnectorConfig()
    decoder: DecoderConfig = DecoderConfig()
    gmoe: GMoEConfig = GMoEConfig()
    image_token_id: int = 151646
    pad_token_id: int = 151643
    eos_token_ids: tuple[int, ...] = (151645, 151643)
    tokenizer_vocab_size: int = 151647  # rows >= this are never produced by the tokenizer
    param_dtype: str = "float32"
    runtime: RuntimeConfig = RuntimeConfig()

    def __post_init__(self):
        if self.gmoe_dispatch not in DISPATCH_MODES:
            raise ValueError(f"gmoe_dispatch={self.gmoe_dispatch!r}; expected one of {DISPATCH_MODES}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
        if self.attention_causal_blocks < 1:
            raise ValueError(f"attention_causal_blocks={self.attention_causal_blocks}; expected >= 1")
        if self.vision.num_layers_used > self.vision.num_hidden_layers:
            raise ValueError("vision.num_layers_used exceeds vision.num_hidden_layers")
        if self.decoder.hidden_size % self.decoder.num_attention_heads:
            raise ValueError("decoder.hidden_size must be divisible by num_attention_heads")
        if self.decoder.num_attention_heads % self.decoder.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    # Runtime settings read through the config (they live in `runtime`).
    dtype = property(lambda self: self.runtime.dtype)
    remat_policy = property(lambda self: self.runtime.remat_policy)
    attention_causal_blocks = property(lambda self: self.runtime.attention_causal_blocks)
    gmoe_dispatch = property(lambda self: self.runtime.gmoe_dispatch)

    @property
    def tokens_per_image(self) -> int:
        """LLM positions per image: patch tokens plus one `image_newline`."""
        return self.vision.num_patches + int(self.connector.use_image_newline)

    def replace(self, **kwargs) -> "ModelConfig":
        """Returns a copy; nested parts accept dicts, e.g. `replace(gmoe={'num_experts': 1})`;
        runtime fields may be given directly, e.g. `replace(dtype='bfloat16', gmoe_dispatch='ragged')`."""
        kwargs = _lift_runtime(kwargs)
        parts = {}
        for key, value in kwargs.items():
            current = getattr(self, key)
            if isinstance(value, dict) and dataclasses.is_dataclass(current):
                value = dataclasses.replace(current, **value)
            parts[key] = value
        return dataclasses.replace(self, **parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def architecture(self) -> dict[str, Any]:
        """The fields that define the parameters: a checkpoint's identity (runtime left out)."""
        d = self.to_dict()
        d.pop("runtime")
        d["eos_token_ids"] = list(d["eos_token_ids"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = _lift_runtime(dict(d))
        sub = {"vision": VisionConfig, "connector": ConnectorConfig, "decoder": DecoderConfig, "gmoe": GMoEConfig,
               "runtime": RuntimeConfig}
        for key, klass in sub.items():
            if key in d and isinstance(d[key], dict):
                d[key] = klass(**d[key])
        if "eos_token_ids" in d:
            d["eos_token_ids"] = tuple(d["eos_token_ids"])
        return cls(**d)


def _lift_runtime(kw: dict[str, Any]) -> dict[str, Any]:
    """Moves runtime fields given at the top level (and the older `gmoe.dispatch`) into `runtime`.
    The older dispatch name "grouped" ran row 0's expert for every row; it now means "auto"."""
    kw = dict(kw)
    runtime = kw.pop("runtime", None) or {}
    runtime = dataclasses.asdict(runtime) if dataclasses.is_dataclass(runtime) else dict(runtime)
    for key in RUNTIME_FIELDS:
        if key in kw:
            runtime[key] = kw.pop(key)
    gmoe = kw.get("gmoe")
    if isinstance(gmoe, dict) and "dispatch" in gmoe:
        runtime["gmoe_dispatch"] = gmoe["dispatch"]
        kw["gmoe"] = {k: v for k, v in gmoe.items() if k != "dispatch"}
    if runtime.get("gmoe_dispatch") == "grouped":
        runtime["gmoe_dispatch"] = "auto"
    if runtime:
        kw["runtime"] = runtime
    return kw
