"""Source checkpoint layouts (docs/architecture.md, section 5) and their detection from config.json + key names.

`model_type` picks the family; the key names pick the spelling within it (anchor tensors such as
`{lm}embed_tokens.weight` must exist). The feed-forward segment is read from the keys too:
`mlp.{e}.` (RSUniVLM experts), `mlp.experts.{e}.` (an HF-style spelling for experts) or a
dense `mlp.`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from rsunivlm_jax.convert import ConversionError

FAMILIES = {
    "llava_qwen_gmoe": "llava_next",  # RSUniVLM release
    "llava_qwen": "llava_next",  # original LLaVA-OneVision (LLaVA-NeXT code base)
    "llava_onevision": "hf_llava_onevision",  # transformers
    "qwen2": "qwen2",
    "siglip_vision_model": "siglip",
    "siglip": "siglip",
}
UNSUPPORTED = {
    "llava_qwen_moe": "the learned-router MoE variant of LLaVA-NeXT is not RSUniVLM's G-MoE",
    "qwen2_moe": "Qwen2-MoE has a learned router; RSUniVLM's experts are routed by task tag",
}


@dataclass(frozen=True)
class Layout:
    name: str
    family: str
    description: str
    prefixes: dict = field(default_factory=dict)  # vt, lm, head, proj1, proj2, newline

    @property
    def parts(self) -> tuple[str, ...]:
        p = self.prefixes
        out = (("vision",) if "vt" in p else ()) + (("connector",) if "proj1" in p else ())
        return out + (("decoder",) if "lm" in p else ()) + (("lm_head",) if "head" in p else ())

    def anchors(self) -> list[str]:
        out = []
        if "lm" in self.prefixes:
            out.append(self.prefixes["lm"] + "embed_tokens.weight")
        if "vt" in self.prefixes:
            out.append(self.prefixes["vt"] + "embeddings.patch_embedding.weight")
        if "proj1" in self.prefixes:
            out.append(self.prefixes["proj1"] + "weight")
        return out


_HF = dict(proj1="multi_modal_projector.linear_1.", proj2="multi_modal_projector.linear_2.")
_HF_MEM = dict(proj1="model.multi_modal_projector.linear_1.", proj2="model.multi_modal_projector.linear_2.")
LAYOUTS = (
    Layout("llava_next", "llava_next",
           "RSUniVLM / LLaVA-NeXT original (model.layers, model.mm_projector.{0,2}, "
           "model.vision_tower.vision_tower.vision_model)",
           dict(lm="model.", head="lm_head.weight", vt="model.vision_tower.vision_tower.vision_model.",
                proj1="model.mm_projector.0.", proj2="model.mm_projector.2.", newline="model.image_newline")),
    Layout("hf_hub", "hf_llava_onevision",
           "transformers llava_onevision, names stored on the Hub by llava-hf (transformers < 4.52)",
           dict(lm="language_model.model.", head="language_model.lm_head.weight", vt="vision_tower.vision_model.",
                newline="image_newline", **_HF)),
    Layout("hf_saved_5x", "hf_llava_onevision",
           "transformers llava_onevision as written by save_pretrained in transformers 5.x "
           "(legacy names, vision tower without vision_model.)",
           dict(lm="language_model.model.", head="language_model.lm_head.weight", vt="vision_tower.",
                newline="image_newline", **_HF)),
    Layout("hf_memory_4x", "hf_llava_onevision",
           "transformers llava_onevision, in-memory names of transformers 4.52-4.x",
           dict(lm="model.language_model.", head="lm_head.weight", vt="model.vision_tower.vision_model.",
                newline="model.image_newline", **_HF_MEM)),
    Layout("hf_memory_5x", "hf_llava_onevision",
           "transformers llava_onevision, in-memory names of transformers 5.x (model.vision_tower.*)",
           dict(lm="model.language_model.", head="lm_head.weight", vt="model.vision_tower.",
                newline="model.image_newline", **_HF_MEM)),
    Layout("qwen2", "qwen2", "bare Qwen2ForCausalLM (model.*, lm_head)", dict(lm="model.", head="lm_head.weight")),
    Layout("qwen2_model", "qwen2", "bare Qwen2Model without a head (embed_tokens.*, layers.*)", dict(lm="")),
    Layout("siglip_vision_model", "siglip", "bare SigLIP vision model / SiglipModel (vision_model.*)",
           dict(vt="vision_model.")),
    Layout("siglip_vision_model_5x", "siglip", "bare SiglipVisionModel of transformers 5.x (no vision_model.)",
           dict(vt="")),
)


@dataclass
class Detected:
    """What was found: the layout, the feed-forward spelling and key-derived facts."""

    layout: Layout
    model_type: str
    prefixes: dict  # layout prefixes + "mlp" (+ "head"/"newline" only when present)
    source_experts: int | None  # None: dense feed-forward
    vision_blocks: int | None  # stored SigLIP blocks
    has_head: bool
    has_newline: bool

    @property
    def name(self) -> str:
        if "lm" in self.layout.prefixes:
            kind = "dense" if self.source_experts is None else f"{self.source_experts} experts"
            return f"{self.layout.name} ({kind}, {'untied lm_head' if self.has_head else 'tied head'})"
        return self.layout.name

    @property
    def parts(self) -> tuple[str, ...]:
        parts = self.layout.parts
        return parts if self.has_head else tuple(p for p in parts if p != "lm_head")


def family_of(model_type: str | None) -> str:
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if model_type in UNSUPPORTED:
        raise ConversionError(f"config.json: model_type {model_type!r} is not supported: {UNSUPPORTED[model_type]}")
    raise ConversionError(f"config.json: unknown model_type {model_type!r}; supported: {sorted(FAMILIES)}")


def _count(keys: set[str], template: str) -> int:
    """Number of consecutive indices i = 0, 1, ... for which template.format(i=i) is a key."""
    n = 0
    while template.format(i=n) in keys:
        n += 1
    return n


def detect(model_type: str | None, keys) -> Detected:
    family = family_of(model_type)
    keys = set(keys)
    candidates = [lay for lay in LAYOUTS if lay.family == family]
    matches = [lay for lay in candidates if all(a in keys for a in lay.anchors())]
    if len(matches) != 1:
        expected = "; ".join(f"{lay.name}: {lay.anchors()}" for lay in candidates)
        sample = sorted(keys)[:8]
        what = "match none" if not matches else f"match several ({[m.name for m in matches]})"
        raise ConversionError(f"model_type {model_type!r}: the tensor names {what} of the known layouts "
                              f"(anchor tensors per layout: {expected}); first names in the checkpoint: {sample}")
    layout = matches[0]
    prefixes = dict(layout.prefixes)
    experts = None
    if "lm" in prefixes:
        lm = prefixes["lm"]
        if f"{lm}layers.0.mlp.0.gate_proj.weight" in keys:
            prefixes["mlp"], experts = "mlp.{e}.", _count(keys, lm + "layers.0.mlp.{i}.gate_proj.weight")
        elif f"{lm}layers.0.mlp.experts.0.gate_proj.weight" in keys:
            prefixes["mlp"] = "mlp.experts.{e}."
            experts = _count(keys, lm + "layers.0.mlp.experts.{i}.gate_proj.weight")
        else:
            prefixes["mlp"] = "mlp."  # dense (a missing tensor is reported by the plan)
    blocks = None
    if "vt" in prefixes:
        blocks = _count(keys, prefixes["vt"] + "encoder.layers.{i}.layer_norm1.weight")
        pat = re.compile(re.escape(prefixes["vt"]) + r"encoder\.layers\.(\d+)\.")
        stored = {int(m.group(1)) for k in keys if (m := pat.match(k))}
        if stored and max(stored) + 1 != blocks:
            blocks = max(stored) + 1  # a gap: the plan reports the missing block tensors
    has_head = "head" in prefixes and prefixes["head"] in keys
    has_newline = "newline" in prefixes and prefixes["newline"] in keys
    return Detected(layout, model_type, prefixes, experts, blocks, has_head, has_newline)
