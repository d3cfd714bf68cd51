"""Adapters in peft's format: `adapter_config.json` + `adapter_model.safetensors`.

Keys are `base_model.model.<module>.lora_A.weight` (`[r, in]`) and `...lora_B.weight` (`[out, r]`),
where `<module>` is the torch module name in the layout the base model came from. Names come from
the converter's key table (`rsunivlm_jax.convert.mapping` rules, spelled with a layout's prefixes
from `rsunivlm_jax.convert.layouts`), so adapters and the `--to-torch` weights always agree:

* ``llava_next``: the RSUniVLM release (`model.layers.{l}.mlp.{e}.gate_proj`, one adapter per expert,
  `model.mm_projector.{0,2}`, `model.vision_tower.vision_tower.vision_model.encoder.layers.{j}...`);
* ``hf_memory_5x`` (default for a transformers `llava_onevision` base): the module names of
  `LlavaOnevisionForConditionalGeneration` in transformers 5.x, what `peft.get_peft_model` uses
  (`model.language_model.layers.{l}.self_attn.q_proj`); ``hf_memory_4x`` / ``hf_hub`` spell the
  same modules as transformers 4.52-4.x / < 4.52 did. These layouts have one MLP per layer.

Import reads any of them (the layout is recognised from the names); modules or layers the file does
not adapt get zero adapters (no change), so the adapted function is exactly the file's.
"""
from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rsunivlm_jax.convert import layouts, mapping
from rsunivlm_jax.lora import config as lora_config
from rsunivlm_jax.lora.config import LoraConfig
from rsunivlm_jax.tree import unflatten

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
EXPORT_LAYOUTS = ("llava_next", "hf_memory_5x", "hf_memory_4x", "hf_hub")
HF_DEFAULT = "hf_memory_5x"
_MLP_SPELLINGS = {"llava_next": ("mlp.{e}.", "mlp.experts.{e}.", "mlp."), "hf_llava_onevision": ("mlp.",)}
# adapter_config.json fields with a meaning we do not implement -> the value that means "not used".
_UNSUPPORTED = {"use_dora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False,
                "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "target_parameters": None,
                "trainable_token_indices": None, "layer_replication": None, "use_qalora": False,
                "alora_invocation_tokens": None}


class AdapterFormatError(ValueError):
    """An adapter directory that cannot be read; the message names the file, key or field."""


def _rules_by_module() -> dict[str, mapping.Rule]:
    return {r.target[: -len("/kernel")]: r for r in lora_config.candidate_rules()}


def _layout(name: str) -> layouts.Layout:
    for lay in layouts.LAYOUTS:
        if lay.name == name:
            return lay
    raise ValueError(f"unknown layout {name!r}; adapters are written in one of {EXPORT_LAYOUTS}")


def prefixes_for(layout: str, num_experts: int, mlp: str | None = None) -> dict[str, str]:
    """Template prefixes of a full-model layout, with the feed-forward spelling (`{mlp}`)."""
    lay = _layout(layout)
    if lay.family not in _MLP_SPELLINGS:
        raise ValueError(f"layout {layout!r} is not a full vision-language model layout")
    prefixes = dict(lay.prefixes)
    if mlp is None:
        mlp = "mlp.{e}." if lay.family == "llava_next" and num_experts > 1 else "mlp."
    prefixes["mlp"] = mlp
    return prefixes


def module_template(rule: mapping.Rule, prefixes: Mapping[str, str]) -> str:
    """The torch module name of a kernel rule with its stacking placeholders (`...layers.{l}.self_attn.q_proj`)."""
    key = mapping.fill_prefixes(rule.source, dict(prefixes))
    if not key.endswith(".weight"):
        raise ValueError(f"rule {rule.target}: source {rule.source!r} is not a module weight")
    return key[: -len(".weight")]


def default_layout(base_meta: Mapping[str, Any] | None, num_experts: int) -> str:
    """The layout the base came from (its converted `meta.json`), else what `--to-torch` writes."""
    source = (base_meta or {}).get("source") or {}
    name = source.get("layout")
    if name == "llava_next":
        return "llava_next"
    if name in ("hf_hub", "hf_saved_5x", "hf_memory_4x", "hf_memory_5x"):
        return HF_DEFAULT if num_experts == 1 else "llava_next"
    return "llava_next"


# ---- export ------------------------------------------------------------------------------------

def _slots(rule: mapping.Rule, template: str, stack: tuple[int, ...]):
    """(array index, name index) pairs of a stacked kernel in a template's spelling."""
    axes = mapping.stack_axes(template)
    lead = stack
    dense_experts = rule.experts and "e" not in axes
    if dense_experts:
        lead = stack[:1]
    for index in itertools.product(*(range(n) for n in lead)):
        yield index + ((0,) if dense_experts else ()), dict(zip(axes, index))


def state_dict(adapters: Mapping[str, Any], layout: str, num_experts: int, *, dtype: str = "float32"
               ) -> dict[str, np.ndarray]:
    """peft state dict (`base_model.model.<module>.lora_{A,B}.weight`, torch `[out, in]` layout)."""
    from rsunivlm_jax.lora.adapters import adapter_modules
    from rsunivlm_jax.convert.io import np_dtype
    rules = _rules_by_module()
    prefixes = prefixes_for(layout, num_experts)
    out: dict[str, np.ndarray] = {}
    for module, (a, b) in adapter_modules(adapters).items():
        rule = rules.get(module)
        if rule is None:
            raise ValueError(f"adapter for {module}: not a module the key table names")
        a, b = np.asarray(a), np.asarray(b)
        template = module_template(rule, prefixes)
        stack = a.shape[:-2]
        if rule.experts and "e" not in mapping.stack_axes(template) and stack[1] != 1:
            raise ValueError(f"layout {layout!r} has one MLP per layer, but {module} has adapters for {stack[1]} "
                             "experts; export in the llava_next layout")
        for index, names in _slots(rule, template, stack):
            name = PREFIX + template.format(**names)
            out[f"{name}.lora_A.weight"] = np.ascontiguousarray(mapping.inverse("linear", a[index])).astype(
                np_dtype(dtype), copy=False)
            out[f"{name}.lora_B.weight"] = np.ascontiguousarray(mapping.inverse("linear", b[index])).astype(
                np_dtype(dtype), copy=False)
    return out


def target_regex(adapters: Mapping[str, Any], layout: str, num_experts: int) -> str:
    """peft `target_modules` (a regex, fully matched against module names) for exactly these modules."""
    from rsunivlm_jax.lora.adapters import adapter_modules
    rules = _rules_by_module()
    prefixes = prefixes_for(layout, num_experts)
    alts = []
    for module in adapter_modules(adapters):
        template = module_template(rules[module], prefixes)
        pattern = re.escape(template)
        for axis in ("j", "l", "e"):
            pattern = pattern.replace(re.escape("{" + axis + "}"), r"\d+")
        alts.append(pattern)
    return "|".join(alts)


def adapter_config(lora: LoraConfig, target_modules: str, *, base_model: str | None = None) -> dict:
    """peft `LoraConfig.to_dict()` fields for a plain LoRA adapter."""
    return {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model, "revision": None,
        "r": int(lora.rank), "lora_alpha": float(lora.alpha), "lora_dropout": float(lora.dropout),
        "target_modules": target_modules, "use_rslora": bool(lora.use_rslora), "init_lora_weights": True,
        "inference_mode": True, "layers_to_transform": None, "layers_pattern": None, "exclude_modules": None,
        **{k: v for k, v in _UNSUPPORTED.items()},
    }


def save(dst: str | os.PathLike, adapters: Mapping[str, Any], lora: LoraConfig, *, layout: str, num_experts: int,
         base_model: str | None = None, dtype: str = "float32") -> dict:
    """Writes `dst/adapter_config.json` + `dst/adapter_model.safetensors` (each through a temp name);
    returns a summary. `dst` may exist but must not hold an adapter already."""
    from safetensors.numpy import save_file
    if layout not in EXPORT_LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {EXPORT_LAYOUTS}")
    dst = Path(dst)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if (dst / name).exists():
            raise FileExistsError(f"{dst / name} already exists; choose a new directory")
    tensors = state_dict(adapters, layout, num_experts, dtype=dtype)
    config = adapter_config(lora, target_regex(adapters, layout, num_experts), base_model=base_model)
    dst.mkdir(parents=True, exist_ok=True)
    tmp = dst / f".{WEIGHTS_FILE}.partial-{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, dst / WEIGHTS_FILE)
    tmp = dst / f".{CONFIG_FILE}.partial-{os.getpid()}"
    tmp.write_text(json.dumps(config, indent=2), encoding="utf-8")
    os.replace(tmp, dst / CONFIG_FILE)
    return {"layout": layout, "num_tensors": len(tensors), "dtype": dtype, "files": [CONFIG_FILE, WEIGHTS_FILE]}


# ---- import ------------------------------------------------------------------------------------

def read_config(src: Path) -> dict:
    path = src / CONFIG_FILE
    if not path.is_file():
        raise AdapterFormatError(f"{src}: no {CONFIG_FILE} (not a peft adapter directory)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise AdapterFormatError(f"{path}: expected a JSON object")
    if cfg.get("peft_type") != "LORA":
        raise AdapterFormatError(f"{path}: peft_type {cfg.get('peft_type')!r}; only LORA adapters are supported")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or isinstance(cfg.get(key), bool) or cfg[key] <= 0:
            raise AdapterFormatError(f"{path}: {key}={cfg.get(key)!r}; expected a positive number")
    for key, plain in _UNSUPPORTED.items():
        value = cfg.get(key, plain)
        if value not in (plain, None) and not (isinstance(plain, dict) and value == {}) and value != []:
            raise AdapterFormatError(f"{path}: {key}={value!r} is not supported (a plain LoRA adapter has "
                                     f"{key}={plain!r})")
    return cfg


def read_tensors(src: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open
    path = src / WEIGHTS_FILE
    if not path.is_file():
        raise AdapterFormatError(f"{src}: no {WEIGHTS_FILE}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - reported with the file name
        raise AdapterFormatError(f"{path}: not a valid safetensors file ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _parsers(layout: str, mlp: str, num_experts: int):
    """(name regex, our module, rule, stacking axes in the name) for every adaptable kernel."""
    prefixes = prefixes_for(layout, num_experts, mlp)
    out = []
    for module, rule in _rules_by_module().items():
        template = module_template(rule, prefixes)
        pattern = re.escape(template)
        for axis in ("j", "l", "e"):
            pattern = pattern.replace(re.escape("{" + axis + "}"), f"(?P<{axis}>\\d+)")
        out.append((re.compile(pattern), module, rule, mapping.stack_axes(template)))
    return out


def _module_names(tensors: Mapping[str, np.ndarray], where: Path) -> dict[str, dict[str, np.ndarray]]:
    mods: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = re.fullmatch(re.escape(PREFIX) + r"(.+)\.(lora_A|lora_B)\.weight", key)
        if m is None:
            raise AdapterFormatError(f"{where / WEIGHTS_FILE}: tensor {key!r} is not a LoRA A/B weight "
                                     f"({PREFIX}<module>.lora_A.weight / .lora_B.weight)")
        mods.setdefault(m.group(1), {})[m.group(2)] = value
    for name, ab in mods.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise AdapterFormatError(f"{where / WEIGHTS_FILE}: module {name!r} has only {sorted(ab)}")
    return mods


def detect_layout(names, num_experts: int, layout: str | None = None):
    """(layout, {torch module name: (our module, rule, index in the name, its axes)}) of the one known
    layout in which every name parses."""
    candidates = [layout] if layout else sorted(
        (lay.name for lay in layouts.LAYOUTS if lay.family in _MLP_SPELLINGS), key=lambda n: n != HF_DEFAULT)
    found = []
    for lay_name in candidates:
        family = _layout(lay_name).family
        for mlp in _MLP_SPELLINGS[family]:
            parsers = _parsers(lay_name, mlp, num_experts)
            parsed = {}
            for name in names:
                for pattern, module, rule, axes in parsers:
                    m = pattern.fullmatch(name)
                    if m:
                        parsed[name] = (module, rule, tuple(int(m.group(a)) for a in axes), axes)
                        break
                else:
                    break
            if len(parsed) == len(names):
                found.append((lay_name, parsed))
                break
    if not found:
        sample = sorted(names)[:4]
        which = f"are not those of layout {layout!r}" if layout else f"match none of the layouts {candidates}"
        raise AdapterFormatError(f"the adapter's module names {which}; first names: {sample}")
    # Layouts that spell the adapted modules alike (e.g. differing only in the vision tower's
    # prefix, for an adapter without vision modules) read the file the same way.
    found = [f for i, f in enumerate(found) if all(f[1] != g[1] for g in found[:i])]
    if len(found) > 1:
        raise AdapterFormatError(f"the adapter's module names match several layouts ({[f[0] for f in found]}); "
                                 "pass the layout explicitly")
    return found[0]


def load(src: str | os.PathLike, model_config, *, layout: str | None = None) -> tuple[dict, LoraConfig, dict]:
    """Reads a peft LoRA adapter for `model_config` -> (adapter tree, LoraConfig, summary)."""
    from flax import nnx

    from rsunivlm_jax.functional import abstract_model
    src = Path(src)
    cfg = read_config(src)
    tensors = read_tensors(src)
    if not tensors:
        raise AdapterFormatError(f"{src / WEIGHTS_FILE}: holds no tensors")
    mods = _module_names(tensors, src)
    num_experts = model_config.gmoe.num_experts
    try:
        lay_name, parsed = detect_layout(list(mods), num_experts, layout)
    except AdapterFormatError as e:
        raise AdapterFormatError(f"{src / WEIGHTS_FILE}: {e}") from None
    _, state = abstract_model(model_config)
    kernels = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}
    rank = int(cfg["r"])
    arrays: dict[str, list[np.ndarray]] = {}
    problems = []
    for name, (module, rule, index, axes) in sorted(parsed.items()):
        kernel = kernels.get(rule.target)
        if kernel is None:
            problems.append(f"{name}: the model has no {rule.target}")
            continue
        shape = tuple(kernel.shape)
        stack, d_in, d_out = shape[:-2], shape[-2], shape[-1]
        if rule.experts and "e" not in axes:
            if stack[1] != 1:
                problems.append(f"{name}: a one-MLP-per-layer adapter for a model with {stack[1]} experts")
                continue
            index = index + (0,)
        if any(i >= n for i, n in zip(index, stack)):
            problems.append(f"{name}: index {index} is outside the model's {stack}")
            continue
        a_t, b_t = mods[name]["lora_A"], mods[name]["lora_B"]
        if a_t.shape != (rank, d_in) or b_t.shape != (d_out, rank):
            problems.append(f"{name}: lora_A {a_t.shape} / lora_B {b_t.shape}; expected ({rank}, {d_in}) / "
                            f"({d_out}, {rank}) for r={rank}")
            continue
        if module not in arrays:
            arrays[module] = [np.zeros(stack + (d_in, rank), np.float32), np.zeros(stack + (rank, d_out), np.float32)]
        arrays[module][0][index] = mapping.forward("linear", np.asarray(a_t, np.float32))
        arrays[module][1][index] = mapping.forward("linear", np.asarray(b_t, np.float32))
    if problems:
        raise AdapterFormatError(f"{src}: the adapter does not fit the model:\n  " + "\n  ".join(problems))
    lora = LoraConfig(rank=rank, alpha=float(cfg["lora_alpha"]), dropout=float(cfg.get("lora_dropout") or 0.0),
                      targets=tuple(re.escape(m) for m in arrays), use_rslora=bool(cfg.get("use_rslora", False)))
    flat = {}
    for module, (a, b) in arrays.items():
        flat[f"{module}/lora/lora_a"], flat[f"{module}/lora/lora_b"] = a, b
    total = sum(int(np.prod(a.shape[:-2])) for a, _ in arrays.values())
    summary = {"layout": lay_name, "modules": sorted(arrays), "adapted_slots": len(parsed), "slots": total,
               "dtype": str(next(iter(tensors.values())).dtype), "base_model": cfg.get("base_model_name_or_path")}
    return unflatten(flat), lora, summary

