"""Training metrics: model FLOPs and MFU, JSONL + TensorBoard writers, a tqdm progress bar.

FLOP formula (model FLOPs, MaxText convention: remat recomputation is not counted)
for one example with T text tokens and n images, L = T + n (P - 1) decoder positions (static,
padded shapes, i.e. the work the step does):

  matmul FLOPs of a part = 2 x (its matmul parameters) x (tokens through it) per forward pass
    vision tower : patch-embedding + per-layer q, k, v, o, fc1, fc2 weights, x n * Np patches
    connector    : linear_1 + linear_2, x n * Np patches
    decoder      : per-layer q, k, v, o + ONE expert's gate, up, down (G-MoE counts only the
                   selected expert; "dense_mask" dispatch computes three, the extra two are not
                   model FLOPs), x L positions
    lm_head      : D x V, x T positions (the loss uses `output="text"`; no head on image positions)
  attention FLOPs per layer and forward pass: 4 x S x d per token (QK^T and AV), with S the
    sequence length and d the attention width; causal (decoder) counts half: 2 x L x D per token;
    the vision tower attends over its Np patches in full: 4 x Np x Dv per patch.
  training multiplier per part: x3 (forward + weight gradients + input gradients, the "6N" rule)
    when the part is trained; a frozen part costs x1 (forward only) when nothing upstream of it
    is trained, x2 (forward + input gradients) when something upstream is trained.
  Embedding lookups, norms, RoPE, softmax and the optimiser are not counted.

For the released RSUniVLM this gives, per decoder position, 6 x (44.1 M attention + 313.8 M one
expert) params = 2.15 GFLOP plus 6 x 136.1 M = 0.82 GFLOP per text token for the head, plus
6 x 24 x 896 x L for causal attention, and ~1.75 TFLOP per trained 384x384 image for the vision
tower (parameter counts: docs/architecture.md).

MFU = model FLOPs per step / (step time x peak FLOP/s per device x devices).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Mapping

import numpy as np

from rsunivlm_jax import fileio
from rsunivlm_jax.config import ModelConfig

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per chip (vendor figures). Matched as substrings of `device.device_kind`.
PEAK_FLOPS = {
    "TPU v6 lite": 918e12, "TPU v6e": 918e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
    "TPU v4": 275e12, "H200": 989.4e12, "H100": 989.4e12, "A100": 312e12,
}
CHAIN = ("vision", "connector", "decoder")


def peak_flops_per_device(device_kind: str) -> float | None:
    for key, value in PEAK_FLOPS.items():
        if key.lower() in device_kind.lower():
            return value
    return None


def matmul_params(config: ModelConfig) -> dict[str, int]:
    """Matmul weights used per token by each part (one expert for the G-MoE decoder)."""
    v, d = config.vision, config.decoder
    vis_layer = 4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.intermediate_size
    patch = v.patch_size ** 2 * v.num_channels * v.hidden_size
    attn = d.hidden_size * d.num_attention_heads * d.head_dim * 2 + 2 * d.hidden_size * d.num_key_value_heads * d.head_dim
    return {
        "vision": patch + v.num_layers_used * vis_layer,
        "connector": v.hidden_size * d.hidden_size + d.hidden_size * d.hidden_size,
        "decoder": d.num_hidden_layers * (attn + 3 * d.hidden_size * d.intermediate_size),
        "lm_head": d.hidden_size * d.vocab_size,
    }


def _multipliers(trained: Mapping[str, bool]) -> dict[str, int]:
    out, upstream = {}, False
    for part in CHAIN:
        out[part] = 3 if trained.get(part, True) else (2 if upstream else 1)
        upstream = upstream or trained.get(part, True)
    return out


def flops_per_example(config: ModelConfig, text_len: int, num_images: int,
                      trained: Mapping[str, bool] | None = None) -> dict[str, float]:
    """Model FLOPs of one training example by part (see module docstring), and their total."""
    trained = dict(trained or {})
    mult = _multipliers(trained)
    v, d = config.vision, config.decoder
    n_patch = v.num_patches * num_images
    positions = text_len + num_images * (config.tokens_per_image - 1)
    p = matmul_params(config)
    out = {
        "vision": mult["vision"] * (2.0 * p["vision"] * n_patch
                                    + v.num_layers_used * 4.0 * v.num_patches * v.hidden_size * n_patch),
        "connector": mult["connector"] * 2.0 * p["connector"] * n_patch,
        "decoder": mult["decoder"] * (2.0 * p["decoder"] * positions
                                      + d.num_hidden_layers * 2.0 * positions * d.hidden_size * positions),
        "lm_head": mult["decoder"] * 2.0 * p["lm_head"] * text_len,
    }
    out["total"] = sum(out.values())
    return out


def flops_per_step(config: ModelConfig, global_batch: int, text_len: int, num_image_slots: int,
                   trained: Mapping[str, bool] | None = None) -> float:
    """Model FLOPs of one step over static shapes (every image slot is encoded)."""
    return global_batch * flops_per_example(config, text_len, num_image_slots, trained)["total"]


def mfu(flops: float, step_time: float, peak_per_device: float | None, num_devices: int) -> float | None:
    if not peak_per_device or step_time <= 0:
        return None
    return flops / (step_time * peak_per_device * num_devices)


# ---- writers -----------------------------------------------------------------------------------

def _scalar(x) -> float | None:
    try:
        v = float(np.asarray(x))
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None  # JSON has no NaN/Inf: non-finite values become null


class MetricsWriter:
    """Appends `{"step": s, "split": ..., name: value}` lines to `<workdir>/metrics.jsonl` and
    writes TensorBoard scalars `<split>/<name>` under `<workdir>/tensorboard` (process 0 only)."""

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._repair()
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboardX is a core dependency
                log.warning("tensorboardX not installed; writing JSONL only")

    def _repair(self) -> None:
        """A run killed mid-append leaves a torn last line: drop it (with a warning) before appending."""
        if os.path.exists(self.path):
            rows, dropped = fileio.read_jsonl_tolerant(self.path)
            if dropped:
                fileio.atomic_write_jsonl(self.path, rows, ensure_ascii=True)

    def truncate_after(self, step: int) -> None:
        """Drops lines of steps > `step` (a resumed run re-does those steps) and any torn last line."""
        if not self.enabled or not os.path.exists(self.path):
            return
        rows, _ = fileio.read_jsonl_tolerant(self.path)
        fileio.atomic_write_jsonl(self.path, [r for r in rows if r.get("step", 0) <= step], ensure_ascii=True)

    def write(self, step: int, values: Mapping[str, Any], split: str = "train") -> None:
        if not self.enabled:
            return
        row: dict[str, Any] = {"step": int(step), "split": split, "time": time.time()}
        for k, v in values.items():
            if isinstance(v, (list, tuple)):
                row[k] = [_scalar(x) for x in v]
            else:
                row[k] = _scalar(v)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k in ("step", "split", "time") or v is None:
                    continue
                if isinstance(v, list):
                    for i, x in enumerate(v):
                        if x is not None:
                            self._tb.add_scalar(f"{split}/{k}_{i}", x, step)
                else:
                    self._tb.add_scalar(f"{split}/{k}", v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str, split: str | None = "train") -> list[dict]:
    """Rows of a metrics file (optionally one split), last row per step kept; a torn last line
    (a run killed mid-append) is dropped with a warning."""
    rows: dict[int, dict] = {}
    for row in fileio.read_jsonl_tolerant(path)[0]:
        if split is None or row.get("split") == split:
            rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


class Progress:
    """tqdm bar over steps with ETA and the latest loss (a no-op when disabled)."""

    def __init__(self, total: int, initial: int, enabled: bool = True, desc: str = "train"):
        self._bar = None
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, n: int = 1, **postfix) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                      refresh=False)
            self._bar.update(n)

    def write(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.write(msg)
        else:
            log.info(msg)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
