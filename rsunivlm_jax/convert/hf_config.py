"""config.json (+ generation_config.json) -> `ModelConfig` (docs/architecture.md).

* Decoder dimensions from the Qwen2 fields: top level for `llava_qwen_gmoe`, `llava_qwen` and
  `qwen2`; `text_config` for transformers `llava_onevision`. Fields a transformers config may omit
  take the transformers `Qwen2Config` defaults, and each defaulted field is recorded in the notes.
* The vision tower from a `vision_config` entry when present (as transformers does), else from
  the table of known tower names (`mm_vision_tower`), else an error naming the field.
* Blocks used: `mm_vision_select_layer` / `vision_feature_layer` index the tower's hidden states
  (depth + 1 entries), so -2 on so400m's 27 blocks keeps 26 (the RSUniVLM truncation) and -1
  keeps all. Blocks beyond are dropped (listed in meta.json).
* Facts read from the tensors (experts, tied head, vocabulary rows) are passed in by `convert`.
Unsupported settings (sliding window, rope scaling, other projectors or feature strategies)
raise a `ConversionError` that names the field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rsunivlm_jax import presets
from rsunivlm_jax.config import ConnectorConfig, DecoderConfig, GMoEConfig, ModelConfig, VisionConfig
from rsunivlm_jax.convert import ConversionError
from rsunivlm_jax.convert.layouts import family_of

# transformers 5.24 defaults for fields a nested config may omit.
QWEN2_DEFAULTS = dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=None, rms_norm_eps=1e-6, rope_theta=10000.0,
                      max_position_embeddings=32768, tie_word_embeddings=False, hidden_act="silu")
SIGLIP_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                              layer_norm_eps=1e-6)
# Vision towers named by `mm_vision_tower` in LLaVA-NeXT configs (full depth, before truncation).
KNOWN_TOWERS = {
    "google/siglip-so400m-patch14-384": dict(image_size=384, patch_size=14, num_channels=3, hidden_size=1152,
                                             intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27,
                                             layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh"),
}
VISION_FIELDS = ("image_size", "patch_size", "num_channels", "hidden_size", "intermediate_size",
                 "num_attention_heads", "layer_norm_eps", "hidden_act")
SUPPORTED_VISION_ACTS = ("gelu_pytorch_tanh", "gelu")
IMAGE_TOKEN_DEFAULT = 151646  # LLaVA-OneVision / RSUniVLM <image>


@dataclass
class Parsed:
    """What config.json says (before the tensors are looked at)."""

    model_type: str
    family: str
    decoder: dict | None = None  # DecoderConfig fields except vocab_size / tie_word_embeddings
    config_vocab_size: int | None = None
    config_tie: bool | None = None
    vision: dict | None = None  # VisionConfig fields except the block counts
    vision_depth: int | None = None  # blocks of the tower per the config
    vision_used: int | None = None  # blocks the model runs
    vision_source: str | None = None
    use_image_newline: bool | None = None  # None: decided by the presence of the tensor
    image_token_id: int | None = None
    video_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_ids: tuple[int, ...] | None = None
    tokenizer_vocab_size: int | None = None  # explicit field (written by our export)
    notes: list[str] = field(default_factory=list)


def _get(cfg: dict, name: str, where: str, defaults: dict, notes: list[str]):
    if cfg.get(name) is not None:
        return cfg[name]
    value = defaults[name]
    notes.append(f"{where}{name} absent; using the transformers default {value!r}")
    return value


def _decoder_fields(cfg: dict, where: str, problems: list[str], notes: list[str]) -> dict:
    g = lambda name: _get(cfg, name, where, QWEN2_DEFAULTS, notes)  # noqa: E731
    out = {name: g(name) for name in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                      "num_attention_heads", "rms_norm_eps", "max_position_embeddings")}
    kv = cfg.get("num_key_value_heads")
    out["num_key_value_heads"] = kv if kv is not None else out["num_attention_heads"]
    rope = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", rope.get("rope_theta"))
    if theta is None:
        theta = QWEN2_DEFAULTS["rope_theta"]
        notes.append(f"{where}rope_theta absent; using the transformers default {theta}")
    out["rope_theta"] = float(theta)
    if rope.get("rope_type", "default") != "default" or cfg.get("rope_scaling"):
        problems.append(f"config.json: {where}rope scaling {cfg.get('rope_scaling') or rope} is not supported "
                        f"(RSUniVLM uses plain RoPE)")
    if cfg.get("use_sliding_window"):
        problems.append(f"config.json: {where}use_sliding_window=true is not supported")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        problems.append(f"config.json: {where}hidden_act={act!r}; the Qwen2 decoder supports only 'silu'")
    out["hidden_act"] = "silu"
    return out


def _vision_fields(cfg: dict, where: str, problems: list[str], notes: list[str]) -> tuple[dict, int]:
    out = {name: _get(cfg, name, where, SIGLIP_VISION_DEFAULTS, notes) for name in VISION_FIELDS}
    if out["hidden_act"] not in SUPPORTED_VISION_ACTS:
        problems.append(f"config.json: {where}hidden_act={out['hidden_act']!r}; supported: {SUPPORTED_VISION_ACTS}")
    return out, int(_get(cfg, "num_hidden_layers", where, SIGLIP_VISION_DEFAULTS, notes))


def used_blocks(depth: int, select: Any, field_name: str, problems: list[str]) -> int:
    """Blocks run for hidden-state index `select` of a `depth`-block tower."""
    if isinstance(select, bool) or not isinstance(select, int):
        problems.append(f"config.json: {field_name}={select!r}; only one integer layer index is supported")
        return depth
    n = depth + 1 + select if select < 0 else select
    if not 1 <= n <= depth:
        problems.append(f"config.json: {field_name}={select} selects no block of a {depth}-block vision tower")
        return depth
    return n


def _tower_from_name(cfg: dict, problems: list[str]) -> tuple[dict | None, int | None, str | None]:
    name = cfg.get("mm_vision_tower") or cfg.get("vision_tower")
    if not name:
        problems.append("config.json: neither `vision_config` nor `mm_vision_tower` describes the vision tower")
        return None, None, None
    key = name if name in KNOWN_TOWERS else next((k for k in KNOWN_TOWERS if str(name).rstrip("/").endswith(
        k.split("/")[-1])), None)
    if key is None:
        problems.append(f"config.json: mm_vision_tower={name!r} is not a known tower ({sorted(KNOWN_TOWERS)}) "
                        f"and there is no `vision_config` entry describing it")
        return None, None, None
    spec = dict(KNOWN_TOWERS[key])
    depth = spec.pop("num_hidden_layers")
    return spec, depth, f"mm_vision_tower={name!r} (built-in table entry {key!r})"


def _eos(value) -> tuple[int, ...] | None:
    if value is None:
        return None
    return tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))


def parse(cfg: dict, generation_config: dict | None = None) -> Parsed:
    """Reads config.json; raises a ConversionError listing every unsupported or missing setting."""
    model_type = cfg.get("model_type")
    family = family_of(model_type)
    p = Parsed(model_type=model_type, family=family)
    problems: list[str] = []
    gen = generation_config or {}
    text = cfg
    if family == "hf_llava_onevision":
        text = cfg.get("text_config") or {}
        if not text:
            problems.append("config.json: llava_onevision config has no `text_config`")
        if text.get("model_type", "qwen2") != "qwen2":
            problems.append(f"config.json: text_config.model_type={text.get('model_type')!r}; only qwen2 is supported")
    if family in ("llava_next", "hf_llava_onevision", "qwen2"):
        where = "text_config." if family == "hf_llava_onevision" else ""
        p.decoder = _decoder_fields(text, where, problems, p.notes)
        p.config_vocab_size = text.get("vocab_size")
        p.config_tie = text.get("tie_word_embeddings", cfg.get("tie_word_embeddings"))

    if family == "llava_next":
        if isinstance(cfg.get("vision_config"), dict):
            p.vision, p.vision_depth = _vision_fields(cfg["vision_config"], "vision_config.", problems, p.notes)
            p.vision_source = "vision_config"
        else:
            p.vision, p.vision_depth, p.vision_source = _tower_from_name(cfg, problems)
        if p.vision_depth is not None:
            select = cfg.get("mm_vision_select_layer", -2)
            if "mm_vision_select_layer" not in cfg:
                p.notes.append("mm_vision_select_layer absent; using the LLaVA default -2")
            p.vision_used = used_blocks(p.vision_depth, select, "mm_vision_select_layer", problems)
        feature = cfg.get("mm_vision_select_feature", "patch")
        if feature != "patch":
            problems.append(f"config.json: mm_vision_select_feature={feature!r}; only 'patch' is supported")
        proj = cfg.get("mm_projector_type", "mlp2x_gelu")
        if proj != "mlp2x_gelu":
            problems.append(f"config.json: mm_projector_type={proj!r}; only 'mlp2x_gelu' is supported")
        if cfg.get("mm_resampler_type") not in (None, "identity"):
            problems.append(f"config.json: mm_resampler_type={cfg['mm_resampler_type']!r}; no resampler is supported")
        if cfg.get("mm_hidden_size") not in (None, (p.vision or {}).get("hidden_size")):
            problems.append(f"config.json: mm_hidden_size={cfg['mm_hidden_size']} differs from the vision width "
                            f"{(p.vision or {}).get('hidden_size')}")
        merge = cfg.get("mm_patch_merge_type")
        p.use_image_newline = None if merge is None else "unpad" in merge
        if merge is None:
            p.notes.append("mm_patch_merge_type absent; image_newline used iff the checkpoint stores it")
        aspect = cfg.get("image_aspect_ratio", "square")
        if aspect not in ("square", "pad"):
            p.notes.append(f"image_aspect_ratio={aspect!r}: rsunivlm_jax runs each image as one square base view "
                           f"(RSUniVLM's setting); AnyRes tiling is not reproduced")
        p.image_token_id = cfg.get("image_token_index")
    elif family == "hf_llava_onevision":
        vc = cfg.get("vision_config") or {}
        if vc.get("model_type", "siglip_vision_model") != "siglip_vision_model":
            problems.append(f"config.json: vision_config.model_type={vc.get('model_type')!r}; only SigLIP is supported")
        p.vision, p.vision_depth = _vision_fields(vc, "vision_config.", problems, p.notes)
        p.vision_source = "vision_config"
        p.vision_used = used_blocks(p.vision_depth, cfg.get("vision_feature_layer", -1), "vision_feature_layer",
                                    problems)
        strategy = cfg.get("vision_feature_select_strategy", "full")
        if strategy != "full":
            problems.append(f"config.json: vision_feature_select_strategy={strategy!r}; only 'full' keeps all "
                            f"SigLIP patches as RSUniVLM does")
        act = cfg.get("projector_hidden_act", "gelu")
        if act != "gelu":
            problems.append(f"config.json: projector_hidden_act={act!r}; only exact 'gelu' is supported")
        if cfg.get("multimodal_projector_bias", True) is not True:
            problems.append("config.json: multimodal_projector_bias=false is not supported")
        p.use_image_newline = bool(cfg.get("use_image_newline_parameter", True))
        p.notes.append("transformers llava_onevision: images run as one base view each (RSUniVLM layout); "
                       f"vision_aspect_ratio={cfg.get('vision_aspect_ratio', 'anyres_max_9')!r} is not reproduced")
        p.image_token_id = cfg.get("image_token_id", cfg.get("image_token_index"))
        p.video_token_id = cfg.get("video_token_id", cfg.get("video_token_index"))
    elif family == "siglip":
        vc = cfg.get("vision_config") if model_type == "siglip" else cfg
        p.vision, p.vision_depth = _vision_fields(vc or {}, "vision_config." if model_type == "siglip" else "",
                                                  problems, p.notes)
        p.vision_source = "vision_config" if model_type == "siglip" else "config.json"
        p.vision_used = p.vision_depth

    if p.image_token_id is None and family in ("qwen2", "siglip"):
        p.image_token_id = cfg.get("image_token_index", cfg.get("image_token_id"))
    p.pad_token_id = next((v for v in (cfg.get("pad_token_id"), text.get("pad_token_id"), gen.get("pad_token_id"),
                                       cfg.get("bos_token_id"), text.get("bos_token_id")) if v is not None), None)
    p.eos_token_ids = _eos(gen.get("eos_token_id")) or _eos(cfg.get("eos_token_id")) or _eos(text.get("eos_token_id"))
    if cfg.get("tokenizer_vocab_size") is not None:
        p.tokenizer_vocab_size = int(cfg["tokenizer_vocab_size"])
    if problems:
        raise ConversionError(problems, "unsupported or incomplete config.json")
    return p


@dataclass
class Resolved:
    config: ModelConfig
    vocabulary: dict
    notes: list[str]


def resolve(p: Parsed, *, parts: tuple[str, ...], num_experts: int, tied: bool, source_rows: int | None,
            vocab_rows: str | int = "keep", tokenizer_size: int | None = None, vision_layers: int | None = None,
            has_newline: bool = False, param_dtype: str = "float32") -> Resolved:
    """Final ModelConfig from the parsed config and the facts read from the tensors."""
    problems: list[str] = []
    notes = list(p.notes)
    base = presets.get("rsunivlm-1b")
    vision = base.vision
    if p.vision is not None:
        used = p.vision_used if vision_layers is None else vision_layers
        if vision_layers is not None and not 1 <= vision_layers <= p.vision_depth:
            problems.append(f"--vision-layers {vision_layers}: the tower has {p.vision_depth} blocks")
            used = p.vision_used
        vision = VisionConfig(num_hidden_layers=used, num_layers_used=used, use_post_layernorm=False, **p.vision)
    connector = base.connector
    if "connector" in parts:
        newline = has_newline if p.use_image_newline is None else p.use_image_newline
        connector = ConnectorConfig(hidden_act="gelu", use_image_newline=newline)

    vocabulary: dict[str, Any] = {}
    decoder = base.decoder
    image_token_id = p.image_token_id
    if image_token_id is None:
        image_token_id = IMAGE_TOKEN_DEFAULT
        if p.family != "siglip":
            notes.append(f"image token id absent from config.json; using {IMAGE_TOKEN_DEFAULT}")
    tokenizer_vocab_size = base.tokenizer_vocab_size
    if p.decoder is not None and source_rows is not None:
        if tokenizer_size is not None:
            tok_from = "tokenizer files"
        elif p.tokenizer_vocab_size is not None:
            tokenizer_size, tok_from = p.tokenizer_vocab_size, "config.json tokenizer_vocab_size"
        elif p.family != "qwen2" and (p.image_token_id is not None or p.video_token_id is not None):
            tokenizer_size = max(i for i in (p.image_token_id, p.video_token_id) if i is not None) + 1
            tok_from = "image/video token ids in config.json (no tokenizer files)"
        else:
            tokenizer_size, tok_from = source_rows, "embedding rows (no tokenizer files or token ids)"
        if vocab_rows == "keep":
            kept, mode = source_rows, "keep"
        elif vocab_rows == "tokenizer":
            kept, mode = tokenizer_size, "trim"
            if tok_from.startswith("embedding rows"):
                problems.append("--vocab-rows tokenizer: the source has no tokenizer files and config.json names no "
                                "token ids, so the tokenizer length is unknown; pass a number of rows")
        else:
            kept, mode = int(vocab_rows), ("keep" if int(vocab_rows) == source_rows else "trim")
        if kept > source_rows:
            problems.append(f"--vocab-rows {vocab_rows}: {kept} rows requested but the checkpoint has {source_rows}")
        if tokenizer_size > kept:
            problems.append(f"the tokenizer has {tokenizer_size} tokens ({tok_from}) but only {kept} embedding rows "
                            f"would be kept; real tokens would lose their rows")
        tokenizer_vocab_size = tokenizer_size
        vocabulary = {"source_rows": source_rows, "kept_rows": kept, "mode": mode,
                      "dropped_rows": source_rows - kept, "tokenizer_size": tokenizer_size,
                      "tokenizer_size_from": tok_from, "config_vocab_size": p.config_vocab_size}
        if p.config_vocab_size is not None and p.config_vocab_size != source_rows:
            notes.append(f"config.json vocab_size={p.config_vocab_size} but the embedding table has {source_rows} "
                         f"rows; the tensor wins")
        if p.config_tie is not None and bool(p.config_tie) != tied:
            notes.append(f"config.json tie_word_embeddings={p.config_tie} but the checkpoint "
                         f"{'has no' if tied else 'stores a'} separate lm_head; following the tensors")
        decoder = DecoderConfig(vocab_size=kept, tie_word_embeddings=tied, **p.decoder)
    if image_token_id >= decoder.vocab_size and p.decoder is not None:
        msg = f"image token id {image_token_id} is outside the {decoder.vocab_size} embedding rows"
        if "vision" in parts:
            problems.append(msg)
        else:
            notes.append(msg + " (text-only checkpoint; set image_token_id before adding a vision tower)")

    pad = p.pad_token_id if p.pad_token_id is not None else base.pad_token_id
    eos = p.eos_token_ids or base.eos_token_ids
    if p.decoder is not None and (p.pad_token_id is None or not p.eos_token_ids):
        notes.append(f"pad/eos ids not all in config.json or generation_config.json; using pad={pad} eos={eos}")
    if problems:
        raise ConversionError(problems, "cannot build the model configuration")
    config = ModelConfig(vision=vision, connector=connector, decoder=decoder,
                         gmoe=GMoEConfig(num_experts=num_experts), image_token_id=int(image_token_id),
                         pad_token_id=int(pad), eos_token_ids=tuple(int(e) for e in eos),
                         tokenizer_vocab_size=int(tokenizer_vocab_size), param_dtype=param_dtype)
    return Resolved(config, vocabulary, notes)


# ---- the other direction (export) --------------------------------------------------------------

def _known_tower(v: VisionConfig) -> str | None:
    for name, spec in KNOWN_TOWERS.items():
        if all(getattr(v, k) == spec[k] for k in VISION_FIELDS) and v.num_hidden_layers == spec["num_hidden_layers"] - 1:
            return name
    return None


def _qwen2_fields(d: DecoderConfig) -> dict:
    return dict(vocab_size=d.vocab_size, hidden_size=d.hidden_size, intermediate_size=d.intermediate_size,
                num_hidden_layers=d.num_hidden_layers, num_attention_heads=d.num_attention_heads,
                num_key_value_heads=d.num_key_value_heads, rms_norm_eps=d.rms_norm_eps, rope_theta=d.rope_theta,
                max_position_embeddings=d.max_position_embeddings, tie_word_embeddings=d.tie_word_embeddings,
                hidden_act=d.hidden_act, use_sliding_window=False)


def _vision_dict(v: VisionConfig) -> dict:
    return dict(model_type="siglip_vision_model", num_hidden_layers=v.num_hidden_layers, vision_use_head=False,
                **{k: getattr(v, k) for k in VISION_FIELDS})


def export_config(config: ModelConfig, parts: tuple[str, ...], dtype: str) -> dict:
    """config.json for `--to-torch`: RSUniVLM / LLaVA-NeXT layout, or bare qwen2 / siglip for one part."""
    v, d = config.vision, config.decoder
    ids = dict(pad_token_id=config.pad_token_id, eos_token_id=list(config.eos_token_ids),
               bos_token_id=config.pad_token_id, tokenizer_vocab_size=config.tokenizer_vocab_size)
    if "decoder" in parts and "vision" in parts:
        out = dict(architectures=["LlavaQwenGMoEForCausalLM" if config.gmoe.num_experts > 1 else "LlavaQwenForCausalLM"],
                   model_type="llava_qwen_gmoe" if config.gmoe.num_experts > 1 else "llava_qwen",
                   **_qwen2_fields(d), image_token_index=config.image_token_id, mm_projector_type="mlp2x_gelu",
                   mm_hidden_size=v.hidden_size, mm_vision_select_feature="patch",
                   mm_patch_merge_type="spatial_unpad" if config.connector.use_image_newline else "flat",
                   image_aspect_ratio="square", mm_resampler_type=None, torch_dtype=dtype, **ids)
        tower = _known_tower(v) if v.num_layers_used == v.num_hidden_layers else None
        if tower is not None:
            out.update(mm_vision_tower=tower, mm_vision_select_layer=-2)
        else:  # stored blocks = depth; the model runs num_layers_used of them
            out.update(vision_config=_vision_dict(v), mm_vision_select_layer=v.num_layers_used - v.num_hidden_layers - 1)
        if config.gmoe.num_experts > 1:
            out["num_experts"] = config.gmoe.num_experts
        return out
    if "decoder" in parts:
        return dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", **_qwen2_fields(d), torch_dtype=dtype,
                    **ids)
    return dict(architectures=["SiglipVisionModel"], **_vision_dict(v), torch_dtype=dtype)

