"""The declarative weight table: our parameter path <- source key template + transform.

Templates use the layout's prefixes (`{vt}` vision tower, `{lm}` language model, `{head}` lm_head
key, `{proj1}`/`{proj2}` projector linears, `{newline}` the image_newline key, `{mlp}` the
feed-forward segment, which holds `{e}` when the source stores experts) and stacking indices:
`{j}` vision block, `{l}` decoder layer, `{e}` expert. A target stacked over indices has them as
its leading axes, in the order j | l, e.

Transforms (torch -> ours; `inverse` for export):
  copy    unchanged (norm weights, biases, embedding tables, image_newline)
  linear  torch Linear weight [out, in] -> kernel [in, out]
  conv    Conv2d weight OIHW -> HWIO
Rules flagged `vocab` have vocabulary rows on the torch tensor's axis 0 (kept or trimmed).

Every source tensor must be consumed by a rule or match an ignore pattern; every target leaf
must be filled. `MAPPING_VERSION` is recorded in each converted checkpoint's meta.json.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MAPPING_VERSION = 1
PARTS = ("vision", "connector", "decoder", "lm_head")


@dataclass(frozen=True)
class Rule:
    target: str  # our path, "/"-separated
    source: str  # key template
    transform: str = "copy"
    vocab: bool = False  # torch axis 0 holds vocabulary rows
    experts: bool = False  # target has an expert axis after the layer axis
    optional: bool = False  # the model may lack this target (image_newline when not used)

    @property
    def part(self) -> str:
        return self.target.split("/", 1)[0]


def _vision_rules() -> list[Rule]:
    rules = [
        Rule("vision/embeddings/patch_embedding/kernel", "{vt}embeddings.patch_embedding.weight", "conv"),
        Rule("vision/embeddings/patch_embedding/bias", "{vt}embeddings.patch_embedding.bias"),
        Rule("vision/embeddings/position_embedding/embedding", "{vt}embeddings.position_embedding.weight"),
    ]
    for ln in ("layer_norm1", "layer_norm2"):
        rules += [Rule(f"vision/layers/{ln}/scale", f"{{vt}}encoder.layers.{{j}}.{ln}.weight"),
                  Rule(f"vision/layers/{ln}/bias", f"{{vt}}encoder.layers.{{j}}.{ln}.bias")]
    for name, mod in [(n, "self_attn") for n in ("q_proj", "k_proj", "v_proj", "out_proj")] + \
                     [(n, "mlp") for n in ("fc1", "fc2")]:
        rules += [Rule(f"vision/layers/{mod}/{name}/kernel", f"{{vt}}encoder.layers.{{j}}.{mod}.{name}.weight",
                       "linear"),
                  Rule(f"vision/layers/{mod}/{name}/bias", f"{{vt}}encoder.layers.{{j}}.{mod}.{name}.bias")]
    rules += [Rule("vision/post_layernorm/scale", "{vt}post_layernorm.weight"),
              Rule("vision/post_layernorm/bias", "{vt}post_layernorm.bias")]
    return rules


CONNECTOR_RULES = (
    Rule("connector/linear_1/kernel", "{proj1}weight", "linear"),
    Rule("connector/linear_1/bias", "{proj1}bias"),
    Rule("connector/linear_2/kernel", "{proj2}weight", "linear"),
    Rule("connector/linear_2/bias", "{proj2}bias"),
    Rule("connector/image_newline", "{newline}", optional=True),
)


def _decoder_rules() -> list[Rule]:
    rules = [Rule("decoder/embed_tokens/embedding", "{lm}embed_tokens.weight", vocab=True)]
    for ln in ("input_layernorm", "post_attention_layernorm"):
        rules.append(Rule(f"decoder/layers/{ln}/scale", f"{{lm}}layers.{{l}}.{ln}.weight"))
    for name in ("q_proj", "k_proj", "v_proj"):
        rules += [Rule(f"decoder/layers/self_attn/{name}/kernel", f"{{lm}}layers.{{l}}.self_attn.{name}.weight",
                       "linear"),
                  Rule(f"decoder/layers/self_attn/{name}/bias", f"{{lm}}layers.{{l}}.self_attn.{name}.bias")]
    rules.append(Rule("decoder/layers/self_attn/o_proj/kernel", "{lm}layers.{l}.self_attn.o_proj.weight", "linear"))
    for name in ("gate_proj", "up_proj", "down_proj"):
        rules.append(Rule(f"decoder/layers/mlp/{name}/kernel", f"{{lm}}layers.{{l}}.{{mlp}}{name}.weight", "linear",
                          experts=True))
    rules.append(Rule("decoder/norm/scale", "{lm}norm.weight"))
    return rules


VISION_RULES = tuple(_vision_rules())
DECODER_RULES = tuple(_decoder_rules())
LM_HEAD_RULES = (Rule("lm_head/kernel", "{head}", "linear", vocab=True),)
RULES = VISION_RULES + CONNECTOR_RULES + DECODER_RULES + LM_HEAD_RULES

# Source tensors that are knowingly dropped: (regex template, reason). `{vt}` is the vision prefix.
IGNORE = (
    (r".*\.rotary_emb\.inv_freq$", "rotary inv_freq buffer (recomputed from rope_theta)"),
    (r".*\.position_ids$", "position_ids buffer"),
    (r"^{vt}head\.", "SigLIP attention-pool head (not used by the VLM)"),
)
IGNORE_SIGLIP_FULL = (
    (r"^text_model\.", "SigLIP text tower"),
    (r"^logit_scale$", "SigLIP contrastive logit scale"),
    (r"^logit_bias$", "SigLIP contrastive logit bias"),
)


def rules_for(parts: Sequence[str]) -> list[Rule]:
    return [r for r in RULES if r.part in parts]


def fill_prefixes(template: str, prefixes: dict[str, str]) -> str:
    """Substitutes the layout prefixes; the stacking indices stay as `{j}`, `{l}`, `{e}`."""
    for name, value in prefixes.items():
        template = template.replace("{" + name + "}", value)
    return template


def stack_axes(template: str) -> tuple[str, ...]:
    """Stacking placeholders of a prefix-filled template, in target axis order."""
    return tuple(a for a in ("j", "l", "e") if "{" + a + "}" in template)


def source_key(template: str, index: dict[str, int]) -> str:
    return template.format(**index)


def ignore_patterns(vision_prefix: str | None, extra=()) -> list[tuple[re.Pattern, str]]:
    out = []
    for pattern, reason in IGNORE + tuple(extra):
        if "{vt}" in pattern:
            if vision_prefix is None:
                continue
            pattern = pattern.replace("{vt}", re.escape(vision_prefix))
        out.append((re.compile(pattern), reason))
    return out


# ---- transforms -----------------------------------------------------------------------------

def forward(transform: str, x: np.ndarray) -> np.ndarray:
    """torch layout -> ours."""
    if transform == "copy":
        return x
    if transform == "linear":
        return x.T
    if transform == "conv":
        return x.transpose(2, 3, 1, 0)
    raise ValueError(f"unknown transform {transform!r}")


def inverse(transform: str, x: np.ndarray) -> np.ndarray:
    """ours -> torch layout."""
    if transform == "copy":
        return x
    if transform == "linear":
        return x.T
    if transform == "conv":
        return x.transpose(3, 2, 0, 1)
    raise ValueError(f"unknown transform {transform!r}")


def torch_shape(transform: str, shape: Sequence[int]) -> tuple[int, ...]:
    """Shape a torch tensor must have to become a target slice of `shape`."""
    shape = tuple(shape)
    if transform == "copy":
        return shape
    if transform == "linear":
        return shape[::-1]
    if transform == "conv":
        h, w, i, o = shape
        return (o, i, h, w)
    raise ValueError(f"unknown transform {transform!r}")
