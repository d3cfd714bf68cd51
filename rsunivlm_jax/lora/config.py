"""LoRA settings as data, and which modules of the model they adapt.

`LoraConfig` (peft `LoraConfig`: `r`, `lora_alpha`, `lora_dropout`, `target_modules`,
`use_rslora`). Targets are resolved against the converter's key table
(`rsunivlm_jax.convert.mapping`): every torch `nn.Linear` of the model has a rule there, and its
module path (`decoder/layers/self_attn/q_proj`) is the rule's target without `/kernel`. Each entry
of `targets` is one of

* a group name: ``attention`` (decoder q/k/v/o), ``experts`` (each G-MoE expert's gate/up/down),
  ``connector`` (the projector's two linears), ``vision`` (every SigLIP block's q/k/v/out and fc1/fc2),
  ``vision_attention`` (SigLIP q/k/v/out only);
* a module name matched against the last path component, as peft matches a list of names
  (``q_proj`` adapts the decoder's and, had SigLIP one, the tower's);
* a regular expression over module paths (anything containing ``/``), fully matched.

The untied `lm_head` and the embedding tables are never adapted.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Sequence

from rsunivlm_jax.convert import mapping

GROUPS = {
    "attention": r"decoder/layers/self_attn/(q|k|v|o)_proj",
    "experts": r"decoder/layers/mlp/(gate|up|down)_proj",
    "connector": r"connector/linear_[12]",
    "vision": r"vision/layers/(self_attn/(q|k|v|out)_proj|mlp/fc[12])",
    "vision_attention": r"vision/layers/self_attn/(q|k|v|out)_proj",
}
DEFAULT_TARGETS = ("attention", "experts", "connector")
KINDS = ("linear", "expert")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r, alpha, dropout on the adapter's input, targets (see the module docstring).

    The update is `W x + (alpha / r) * B A dropout(x)` (`alpha / sqrt(r)` with `use_rslora`), B
    initialised to zero and A like peft (`kaiming_uniform_(a=sqrt(5))`), so training starts from the
    base model's function."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    use_rslora: bool = False

    def __post_init__(self):
        if int(self.rank) < 1:
            raise ValueError(f"lora.rank={self.rank}: must be >= 1")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"lora.dropout={self.dropout}: must be in [0, 1)")
        if not self.targets:
            raise ValueError("lora.targets is empty: name at least one module group, name or path regex")
        object.__setattr__(self, "targets", tuple(str(t) for t in self.targets))

    @property
    def scaling(self) -> float:
        return float(self.alpha) / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LoraConfig":
        """From a dict or the `lora` section of an experiment config (unknown keys are ignored)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: d[k] for k in fields if k in d and d[k] is not None}
        if "targets" in kw:
            kw["targets"] = tuple(kw["targets"])
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class Target:
    """One adapted module: its path, kind, stacking and kernel shape `[*stack, d_in, d_out]`."""

    path: str  # e.g. "decoder/layers/mlp/up_proj"
    kind: str  # "linear" (a `Linear`, adapter per stacked layer) or "expert" (`ExpertLinear`, per expert)
    stack: tuple[int, ...]  # leading kernel axes: (layers,) or (layers, experts) or ()
    d_in: int
    d_out: int
    stack_axes: tuple[str | None, ...]  # logical names of the stacking axes
    in_axis: str | None  # logical name of the kernel's input axis
    out_axis: str | None
    rule: mapping.Rule  # the converter's rule for this kernel (names the torch module)


def candidate_rules() -> list[mapping.Rule]:
    """The converter rules of every adaptable kernel (torch `nn.Linear` weights, lm_head excluded)."""
    return [r for r in mapping.RULES if r.transform == "linear" and r.target.endswith("/kernel")
            and r.part != "lm_head"]


def _patterns(targets: Sequence[str]) -> list[tuple[str, re.Pattern]]:
    out = []
    for t in targets:
        if t in GROUPS:
            pattern = GROUPS[t]
        elif "/" in t:
            pattern = t
        elif re.fullmatch(r"[A-Za-z0-9_]+", t):
            pattern = r"(.*/)?" + re.escape(t)
        else:
            raise ValueError(f"lora.targets entry {t!r}: not a group ({sorted(GROUPS)}), a module name or a "
                             "path regex (containing '/')")
        try:
            out.append((t, re.compile(pattern)))
        except re.error as e:
            raise ValueError(f"lora.targets entry {t!r}: invalid regular expression ({e})") from None
    return out


def resolve_targets(config, lora: LoraConfig) -> list[Target]:
    """The modules of `config`'s model that `lora.targets` select, in key-table order.

    Raises naming the entry when one selects nothing (a typo would otherwise train no adapter)."""
    from flax import nnx

    from rsunivlm_jax.functional import abstract_model
    _, state = abstract_model(config)
    variables = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}
    patterns = _patterns(lora.targets)
    used = {t: False for t, _ in patterns}
    out = []
    for rule in candidate_rules():
        path = rule.target[: -len("/kernel")]
        hits = [t for t, p in patterns if p.fullmatch(path)]
        if not hits or rule.target not in variables:
            continue
        for t in hits:
            used[t] = True
        var = variables[rule.target]
        shape = tuple(var.shape)
        axes = tuple(var.get_metadata()["logical_axes"])
        n_stack = len(shape) - 2
        out.append(Target(path=path, kind="expert" if rule.experts else "linear", stack=shape[:n_stack],
                          d_in=shape[-2], d_out=shape[-1], stack_axes=axes[:n_stack], in_axis=axes[-2],
                          out_axis=axes[-1], rule=rule))
    dead = [t for t, u in used.items() if not u]
    if dead:
        known = [r.target[: -len("/kernel")] for r in candidate_rules()]
        raise ValueError(f"lora.targets {dead} select no module of this model; adaptable modules: {known}")
    return out
