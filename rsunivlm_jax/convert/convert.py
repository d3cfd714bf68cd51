"""torch checkpoint directory -> rsunivlm_jax checkpoint directory (rules: docs/architecture.md, section 5).

Order: read config.json and the tensor headers (no data) -> detect the layout -> resolve the
ModelConfig -> plan every target leaf from the mapping table and check it against
`jax.eval_shape` of the model (missing, unexpected and wrongly shaped tensors, all reported
together) -> only then read tensors, one target leaf at a time, into a temporary directory
that is renamed to `dst` at the very end. A failure leaves nothing behind.
"""
from __future__ import annotations

import datetime
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from rsunivlm_jax import checkpoints
from rsunivlm_jax.checkpoints import copy_side_files, write_atomically
from rsunivlm_jax.tree import flatten, unflatten
from rsunivlm_jax.config import ModelConfig
from rsunivlm_jax.convert import ConversionError, hf_config, io, layouts, mapping

DTYPES = ("float32", "bfloat16")
MAX_LISTED = 25  # problems of one kind listed before summarising


@dataclass
class Item:
    """One target leaf: where it goes, what fills it and how."""

    target: str
    shape: tuple[int, ...]
    transform: str
    axes: tuple[str, ...]  # stacking axes present in the source keys
    keys: list[tuple[tuple[int, ...], str]]  # (target index, source key)
    upcycle: int = 0  # >0: one source tensor per layer broadcast over this many experts
    rows: int | None = None  # vocabulary rows to keep (torch axis 0)


def _summarise(kind: str, items: list[str]) -> list[str]:
    if len(items) <= MAX_LISTED:
        return items
    return items[:MAX_LISTED] + [f"... and {len(items) - MAX_LISTED} more {kind}"]


def build_plan(detected: layouts.Detected, config: ModelConfig, reader: io.TensorReader, source_rows: int | None,
               parts: tuple[str, ...]) -> tuple[list[Item], dict[str, str]]:
    """Checks the checkpoint against the model; returns (plan, ignored key -> reason) or raises."""
    from rsunivlm_jax.functional import abstract_init
    _, abstract = abstract_init(config)
    targets = {p: a for p, a in flatten(abstract).items() if p.split("/")[0] in parts}
    missing, shapes, dtypes, internal = [], [], [], []
    consumed: set[str] = set()
    plan: list[Item] = []
    kept_rows = config.decoder.vocab_size
    for rule in mapping.rules_for(parts):
        if rule.target not in targets:
            if rule.optional:
                continue
            internal.append(f"mapping targets {rule.target}, which the model does not have")
            continue
        shape = tuple(targets[rule.target].shape)
        template = mapping.fill_prefixes(rule.source, detected.prefixes)
        axes = mapping.stack_axes(template)
        n_stack = (1 if "/layers/" in rule.target else 0) + int(rule.experts)
        lead, per = shape[:n_stack], shape[n_stack:]
        want = list(mapping.torch_shape(rule.transform, per))
        if rule.vocab:
            want[0] = source_rows
        item = Item(rule.target, shape, rule.transform, axes, [], rows=kept_rows if rule.vocab else None)
        if rule.experts and "e" not in axes:
            item.upcycle = lead[1]
            lead = lead[:1]
        for index in itertools.product(*(range(n) for n in lead)):
            key = mapping.source_key(template, dict(zip(axes, index)))
            item.keys.append((index, key))
            consumed.add(key)
            info = reader.infos.get(key)
            if info is None:
                missing.append(f"missing tensor {key!r} (for {rule.target})")
            elif info.shape != tuple(want):
                shapes.append(f"tensor {key!r} has shape {list(info.shape)}; the model needs {want} "
                              f"(for {rule.target} {list(shape)})")
            elif info.dtype not in io.FLOAT_DTYPES:
                dtypes.append(f"tensor {key!r} has dtype {info.dtype}; expected a floating type")
        plan.append(item)
    unfilled = sorted(set(targets) - {r.target for r in mapping.rules_for(parts)})
    internal += [f"no mapping rule fills {t}" for t in unfilled]

    ignored: dict[str, str] = {}
    vt = detected.prefixes.get("vt")
    extra = mapping.IGNORE_SIGLIP_FULL if detected.model_type == "siglip" else ()
    patterns = mapping.ignore_patterns(vt, extra)
    block = re.compile(re.escape(vt) + r"encoder\.layers\.(\d+)\.") if vt is not None else None
    used = config.vision.num_hidden_layers
    unexpected = []
    for key in reader.keys():
        if key in consumed:
            continue
        reason = next((why for pat, why in patterns if pat.search(key)), None)
        m = block.match(key) if block is not None and reason is None else None
        if m and int(m.group(1)) >= used:
            reason = f"SigLIP block {m.group(1)} dropped (the model runs {used} blocks)"
        if reason is None:
            unexpected.append(f"unexpected tensor {key!r} {list(reader.infos[key].shape)}: no rule consumes it")
        else:
            ignored[key] = reason
    problems = (internal + _summarise("missing tensors", missing) + _summarise("shape mismatches", shapes)
                + _summarise("dtype problems", dtypes) + _summarise("unexpected tensors", unexpected))
    if problems:
        raise ConversionError(problems, f"checkpoint {reader.directory} does not match the model "
                                        f"(layout {detected.name})")
    return plan, ignored


def assemble_leaf(item: Item, reader: io.TensorReader, dtype: np.dtype) -> np.ndarray:
    """Reads the sources of one target leaf (one file handle set, closed afterwards)."""
    out = np.empty(item.shape, dtype)
    with reader.session() as read:
        for index, key in item.keys:
            x = read(key)
            if item.rows is not None:
                x = x[: item.rows]
            x = mapping.forward(item.transform, x)
            if item.upcycle:
                out[index] = np.broadcast_to(x.astype(dtype), (item.upcycle,) + x.shape)
            else:
                out[index] = x
            del x
    return out


def _load_json(path: Path, required: bool) -> dict | None:
    if not path.is_file():
        if required:
            raise ConversionError(f"{path.parent}: no {path.name} (needed to build the model configuration)")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})")
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


def check_destination(dst: Path) -> None:
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConversionError(f"{dst}: destination exists and is not an empty directory; choose a new path")


def _tokenizer_size(src: Path) -> int | None:
    try:
        tok = checkpoints.load_tokenizer(src, hf_config.IMAGE_TOKEN_DEFAULT)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"{src}: tokenizer files present but unreadable ({type(e).__name__}: {e})")
    return None if tok is None else tok.vocab_size


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: str = "float32",
            upcycle_experts: int | None = None, vocab_rows: str | int = "keep", vision_layers: int | None = None,
            hash_files: bool = True, progress: bool = False) -> dict:
    """Converts a PyTorch checkpoint directory; returns the meta.json contents. See the module docstring."""
    src, dst = Path(src), Path(dst)
    check_destination(dst)
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r}: expected one of {DTYPES}")
    if upcycle_experts is not None and upcycle_experts < 1:
        raise ConversionError(f"--upcycle-experts {upcycle_experts}: must be >= 1")
    if isinstance(vocab_rows, str) and vocab_rows not in ("keep", "tokenizer"):
        try:
            vocab_rows = int(vocab_rows)
        except ValueError:
            raise ConversionError(f"--vocab-rows {vocab_rows!r}: expected keep, tokenizer or a number of rows")
    cfg = _load_json(src / "config.json", required=True)
    gen = _load_json(src / checkpoints.GENERATION_CONFIG, required=False)
    parsed = hf_config.parse(cfg, gen)  # unknown model_type / unsupported settings fail here
    reader = io.TensorReader.open(src)
    detected = layouts.detect(parsed.model_type, reader.keys())
    parts = detected.parts

    problems = []
    if detected.source_experts is None:
        num_experts = upcycle_experts or 1
    else:
        num_experts = detected.source_experts
        if upcycle_experts not in (None, num_experts):
            problems.append(f"--upcycle-experts {upcycle_experts}: the checkpoint already stores {num_experts} "
                            f"experts per layer")
    if "decoder" not in parts and upcycle_experts not in (None, 1):
        problems.append("--upcycle-experts needs a checkpoint with a language model")
    if problems:
        raise ConversionError(problems)
    source_rows = None
    if "decoder" in parts:
        embed = reader.infos.get(detected.prefixes["lm"] + "embed_tokens.weight")
        source_rows = embed.shape[0] if embed is not None else None
    resolved = hf_config.resolve(
        parsed, parts=parts, num_experts=num_experts, tied=not detected.has_head, source_rows=source_rows,
        vocab_rows=vocab_rows, tokenizer_size=_tokenizer_size(src), vision_layers=vision_layers,
        has_newline=detected.has_newline, param_dtype=dtype)
    config = resolved.config
    plan, ignored = build_plan(detected, config, reader, source_rows, parts)

    np_dtype = io.np_dtype(dtype)
    meta = {
        "format": checkpoints.FORMAT,
        "mapping_version": mapping.MAPPING_VERSION,
        "converter": "rsunivlm_jax.convert",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "dir": str(src.absolute()),
            "model_type": parsed.model_type,
            "layout": detected.layout.name,
            "layout_detected": detected.name,
            "layout_description": detected.layout.description,
            "format": reader.format,
            "files": reader.describe_files(with_hash=hash_files),
            "dtypes": reader.dtypes(),
            "num_tensors": len(reader.infos),
        },
        "parts": list(parts),
        "param_dtype": dtype,
        "attention_kernels": "flat [in, heads * head_dim] (q/k/v), [heads * head_dim, out] (o/out_proj)",
        "model_config": config.to_dict(),
        "vocabulary": resolved.vocabulary,
        "experts": {"source": detected.source_experts or "dense", "num_experts": config.gmoe.num_experts,
                    "upcycled": detected.source_experts is None and config.gmoe.num_experts > 1}
        if "decoder" in parts else None,
        "lm_head": ("stored" if detected.has_head else "tied to embed_tokens (absent in the source)")
        if "decoder" in parts else None,
        "vision": {"source": parsed.vision_source, "tower_depth": parsed.vision_depth,
                   "stored_blocks": detected.vision_blocks, "used_blocks": config.vision.num_hidden_layers}
        if "vision" in parts else None,
        "ignored_tensors": ignored,
        "notes": resolved.notes + reader.notes,
    }

    def fill(tmp: Path) -> None:
        from tqdm import tqdm
        flat = {}
        for item in tqdm(plan, desc="convert", unit="leaf", disable=not progress):
            arr = assemble_leaf(item, reader, np_dtype)
            flat[item.target] = jax.device_put(arr)
            del arr
        checkpoints.save_params(tmp / checkpoints.PARAMS_DIR, unflatten(flat))
        del flat
        meta["copied_files"] = copy_side_files(src, tmp)
        (tmp / checkpoints.META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    write_atomically(dst, fill)
    return meta

