"""rsunivlm_jax checkpoint -> PyTorch safetensors + config.json (`rsunivlm-convert --to-torch`).

The same mapping table as the import, inverted. Layouts written:
  * full model, E > 1: RSUniVLM / LLaVA-NeXT (`model.layers.{i}.mlp.{e}.*`, `model_type` llava_qwen_gmoe);
  * full model, E = 1: dense original LLaVA-OneVision (`model.layers.{i}.mlp.*`, llava_qwen), no
    `lm_head.weight` when the head is tied;
  * a decoder-only checkpoint: bare Qwen2ForCausalLM; a vision-only one: SigLIP `vision_model.*`.
The import reads the result back bit for bit. Files larger than `max_shard_bytes` are split into
`model-0000i-of-0000n.safetensors` with an index; one shard is materialised at a time.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import numpy as np

from rsunivlm_jax import checkpoints
from rsunivlm_jax.convert import ConversionError, hf_config, io, mapping
from rsunivlm_jax.convert.convert import check_destination, copy_side_files, flatten, write_atomically
from rsunivlm_jax.convert.layouts import LAYOUTS

EXPORT_LAYOUTS = {"full": "llava_next", "decoder": "qwen2", "vision": "siglip_vision_model"}


def _prefixes(parts: tuple[str, ...], num_experts: int) -> tuple[str, dict]:
    kind = "full" if "vision" in parts and "decoder" in parts else ("decoder" if "decoder" in parts else "vision")
    layout = next(lay for lay in LAYOUTS if lay.name == EXPORT_LAYOUTS[kind])
    prefixes = dict(layout.prefixes)
    prefixes["mlp"] = "mlp.{e}." if num_experts > 1 else "mlp."
    return layout.name, prefixes


def torch_tensors(params: dict, parts: tuple[str, ...], num_experts: int, dtype: np.dtype
                  ) -> tuple[str, list[io.PendingTensor]]:
    """(layout name, tensors to write in key order) for a params tree (numpy or jax leaves)."""
    layout, prefixes = _prefixes(parts, num_experts)
    flat = flatten(params)
    out: list[io.PendingTensor] = []
    for rule in mapping.rules_for(parts):
        if rule.target not in flat:
            if rule.optional:
                continue  # e.g. a model without image_newline
            raise ConversionError(f"checkpoint lacks {rule.target}")
        arr = flat[rule.target]
        template = mapping.fill_prefixes(rule.source, prefixes)
        axes = mapping.stack_axes(template)
        n_stack = (1 if "/layers/" in rule.target else 0) + int(rule.experts)
        lead = tuple(arr.shape[:n_stack])
        if rule.experts and "e" not in axes:  # dense layout: the single expert
            lead = lead[:1]
        per = mapping.torch_shape(rule.transform, arr.shape[n_stack:])
        nbytes = math.prod(per) * dtype.itemsize
        for index in itertools.product(*(range(n) for n in lead)):
            full_index = index + ((0,) if rule.experts and "e" not in axes else ())
            key = mapping.source_key(template, dict(zip(axes, index)))

            def make(a=arr, i=full_index, t=rule.transform):
                return np.ascontiguousarray(mapping.inverse(t, np.asarray(a[i]))).astype(dtype, copy=False)

            out.append(io.PendingTensor(key, nbytes, make))
    return layout, out


def export_to_torch(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: str | None = None,
                    max_shard_bytes: int = 2 << 30, progress: bool = False) -> dict:
    """Writes `dst` (safetensors + config.json + tokenizer / generation files); returns a summary."""
    src, dst = Path(src), Path(dst)
    check_destination(dst)
    pre = checkpoints.load(src)
    dtype = dtype or pre.config.param_dtype
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConversionError(f"--dtype {dtype!r}: expected float32, bfloat16 or float16")
    np_dtype = io.np_dtype(dtype)
    params = checkpoints.to_numpy(pre.params)
    layout, tensors = torch_tensors(params, pre.parts, pre.config.gmoe.num_experts, np_dtype)
    config = hf_config.export_config(pre.config, pre.parts, dtype)
    summary = {"layout": layout, "num_tensors": len(tensors), "dtype": dtype, "config": config}

    def fill(tmp: Path) -> None:
        from tqdm import tqdm
        summary["files"] = io.save_safetensors(
            tmp, tensors, max_shard_bytes,
            progress=(lambda it: tqdm(it, desc="export", unit="shard")) if progress else None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        summary["copied_files"] = copy_side_files(src, tmp)

    write_atomically(dst, fill)
    return summary
