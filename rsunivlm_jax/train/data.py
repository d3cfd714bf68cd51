"""Training inputs: sources from the config, Grain datasets, a compact vocabulary for tiny models,
and host batches -> global `jax.Array`s.

* Sources: `data.train` / `data.eval` are comma-separated paths; each is a record file, a record
  directory (`data.train_split` / `data.eval_split` pick the file) or a built TFDS directory
  (has `dataset_info.json`). With `data.synthetic.num > 0` and no `data.train`, the built-in
  synthetic dataset is generated (deterministically) under `data.synthetic.dir`.
* Mixture: by default each source weighs by its record count (batches of one granularity when
  `data.grouping="granularity"`); `data.task_weights` (``{task: weight}``) mixes by task instead,
  one granularity per batch, with `data.granularity_text_len` text slots per granularity
  (`rsunivlm_jax.data.pipeline.make_task_mixture`). `train.loss_weighting` ("token", "sample",
  "sqrt") reweighs each batch's loss mask (`rsunivlm_jax.train.loss.weight_loss_mask`).
* Each process reads its own shard (`rsunivlm_jax.data.pipeline.make_dataset` shards by
  `jax.process_index()`) with batch size global_batch / process_count; `to_global` assembles the
  global batch with `jax.make_array_from_process_local_data`.
* Compact vocabulary (`data.compact_vocab=True`, used by the tiny configs): the real Qwen2
  tokenizer produces ids up to 151,646, but a tiny model has a few hundred embedding rows. The ids
  that occur in the sources (plus digits and box punctuation) are renumbered densely: `<|endoftext|>`
  -> the model's `pad_token_id`, `<|im_end|>` -> `eos_token_ids[0]`, `<image>` -> `image_token_id`,
  anything unseen -> an UNK row. The table is stored as `<workdir>/vocab.json`
  (`full_ids[compact_id]` = tokenizer id) so generation can map ids back (`CompactVocab.to_full`).
* Every run directory gets the tokenizer it trained with (`<workdir>/tokenizer.json`, any
  `data.tokenizer` setting); with `vocab.json` it loads as a compact-vocabulary tokenizer
  (`rsunivlm_jax.data.tokenizer`), so predict / eval / the app read the run like a checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, Mapping, Sequence

import grain
import jax
import numpy as np

from rsunivlm_jax.config import ModelConfig

log = logging.getLogger(__name__)

VOCAB_FILE = "vocab.json"
EXTRA_TEXT = ("[" + ", ".join(str(i) for i in range(101)) + "]\n" + "0123456789 .,;:!?*-()[]")


# ---- compact vocabulary ------------------------------------------------------------------------

class CompactVocab:
    """Dense renumbering of the tokenizer ids a small model needs (see module docstring)."""

    def __init__(self, full_ids: Sequence[int], unk_id: int):
        self.full_ids = np.asarray(full_ids, dtype=np.int64)  # [model_vocab]; -1 = unused row
        self.unk_id = int(unk_id)
        size = int(max(self.full_ids.max(initial=0), 0)) + 1
        self.lut = np.full((size,), self.unk_id, dtype=np.int32)
        used = self.full_ids >= 0
        self.lut[self.full_ids[used]] = np.flatnonzero(used).astype(np.int32)

    def to_compact(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        out = np.full(ids.shape, self.unk_id, dtype=np.int32)
        ok = (ids >= 0) & (ids < len(self.lut))
        out[ok] = self.lut[ids[ok]]
        return out

    def to_full(self, ids: np.ndarray) -> np.ndarray:
        """Model ids -> tokenizer ids (UNK and unused rows -> -1; decoders drop negative ids)."""
        ids = np.asarray(ids)
        return np.where((ids >= 0) & (ids < len(self.full_ids)), self.full_ids[np.clip(ids, 0, len(self.full_ids) - 1)], -1)

    @property
    def num_used(self) -> int:
        return int((self.full_ids >= 0).sum())

    def to_json(self) -> dict:
        return {"full_ids": self.full_ids.tolist(), "unk_id": self.unk_id,
                "doc": "full_ids[model_id] = tokenizer id (-1: unused/UNK)"}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "CompactVocab":
        return cls(d["full_ids"], d["unk_id"])

    def save(self, path: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "CompactVocab":
        with open(path, encoding="utf-8") as f:
            return cls.from_json(json.load(f))

    @classmethod
    def build(cls, token_ids: Iterable[int], *, model: ModelConfig, pad_id: int, eos_id: int,
              image_id: int) -> "CompactVocab":
        """Reserved rows first (pad, eos, image at the model's ids), the rest in ascending id order."""
        v = model.decoder.vocab_size
        full = np.full((v,), -1, dtype=np.int64)
        fixed = {pad_id: model.pad_token_id, eos_id: model.eos_token_ids[0], image_id: model.image_token_id}
        for tok, row in fixed.items():
            full[row] = tok
        unk = max(set(range(v)) - set(fixed.values()))
        free = [i for i in range(v) if full[i] < 0 and i != unk]
        rest = sorted(set(int(t) for t in token_ids) - set(fixed))
        if len(rest) > len(free):
            raise ValueError(f"compact vocabulary: the sources use {len(rest) + len(fixed)} distinct token ids but "
                             f"the model has {v} rows; raise model decoder.vocab_size or disable data.compact_vocab")
        full[free[:len(rest)]] = rest
        return cls(full, unk)


class RemapTokens(grain.transforms.Map):
    """Grain map over batches: `input_ids` through the compact vocabulary."""

    def __init__(self, vocab: CompactVocab):
        self.vocab = vocab

    def map(self, batch: dict) -> dict:
        batch = dict(batch)
        batch["input_ids"] = self.vocab.to_compact(batch["input_ids"])
        return batch


class WeightLossMask(grain.transforms.Map):
    """Grain map over batches: `loss_mask` reweighted per example (`train.loss_weighting`,
    `rsunivlm_jax.train.loss.weight_loss_mask`)."""

    def __init__(self, mode: str):
        from rsunivlm_jax.train.loss import weight_loss_mask
        weight_loss_mask(np.zeros((1, 2), np.float32), mode)  # validates the mode
        self.mode = mode

    def map(self, batch: dict) -> dict:
        from rsunivlm_jax.train.loss import weight_loss_mask
        batch = dict(batch)
        batch["loss_mask"] = weight_loss_mask(batch["loss_mask"], self.mode)
        return batch


def collect_token_ids(sources: Sequence[Any], tokenizer) -> set[int]:
    ids: set[int] = set(tokenizer.encode(EXTRA_TEXT))
    for src in sources:
        for i in range(len(src)):
            rec = src[i]
            try:
                ids.update(int(t) for t in tokenizer.encode_conversation(rec["conversations"]).input_ids)
            except (KeyError, TypeError, ValueError):
                continue  # bad records are counted by the pipeline itself
    return ids


# ---- sources -----------------------------------------------------------------------------------

def resolve_sources(spec: str | Sequence[str] | None, split: str | None, *, lenient: bool, max_images: int) -> list:
    from rsunivlm_jax.data.records import load_source
    from rsunivlm_jax.data.tfds_builder import TfdsSource

    if not spec:
        return []
    paths = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else list(spec)
    out = []
    for p in paths:
        if not p:
            continue
        if os.path.isdir(p) and os.path.exists(os.path.join(p, "dataset_info.json")):
            out.append(TfdsSource(p, split or "train"))
        elif os.path.isdir(p):
            out.append(load_source(p, split=split, strict=not lenient, max_images=max_images))
        elif os.path.isfile(p):
            out.append(load_source(p, strict=not lenient, max_images=max_images))
        else:
            raise FileNotFoundError(f"data source {p!r} does not exist")
    return out


def ensure_synthetic(cfg, image_size: int, workdir: str) -> tuple[str, str]:
    """Generates the synthetic dataset once (process 0) and returns (train file, eval file)."""
    from rsunivlm_jax.data import synthetic

    syn = cfg.synthetic
    out = syn.get("dir") or os.path.join(workdir, "data", "synthetic")
    size = syn.get("image_size") or image_size
    files = (os.path.join(out, "train.jsonl"), os.path.join(out, "val.jsonl"))
    if jax.process_index() == 0:
        if not os.path.exists(files[0]):
            synthetic.write_dataset(out, int(syn.num), image_size=size, seed=int(syn.seed), split="train",
                                    grid_size=int(syn.grid_size), tasks=tuple(syn.tasks))
        if not os.path.exists(files[1]):
            synthetic.write_dataset(out, int(syn.eval_num), image_size=size, seed=int(syn.seed), split="val",
                                    grid_size=int(syn.grid_size), tasks=tuple(syn.tasks))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("synthetic_data")
    return files


class Inputs:
    """Everything the trainer needs from the data side."""

    def __init__(self, train, make_eval, vocab: CompactVocab | None, local_batch: int):
        self.train = train  # a Grain IterDataset (or any iterable of numpy dict batches)
        self.make_eval = make_eval  # () -> fresh iterator over held-out batches, or None
        self.vocab = vocab
        self.local_batch = local_batch


def build_inputs(config, model: ModelConfig, workdir: str, *, vocab_source_dir: str | None = None) -> Inputs:
    """Train / eval Grain datasets from the `data` section of an experiment config."""
    from rsunivlm_jax.data import pipeline
    from rsunivlm_jax.data.tokenizer import TOKENIZER_JSON, Tokenizer, load_default_tokenizer

    d = config.data
    global_batch = int(config.train.global_batch)
    if global_batch % jax.process_count():
        raise ValueError(f"train.global_batch={global_batch} is not divisible by {jax.process_count()} processes")
    local_batch = global_batch // jax.process_count()
    train_spec, eval_spec = d.train, d.eval
    if not train_spec and d.synthetic.num:
        train_spec, eval_spec = ensure_synthetic(d, model.vision.image_size, workdir)
    if not train_spec:
        raise ValueError("no training data: set data.train (paths) or data.synthetic.num > 0")
    max_images = int(d.max_images)
    train_sources = resolve_sources(train_spec, d.train_split, lenient=d.lenient, max_images=max_images)
    eval_sources = resolve_sources(eval_spec, d.eval_split, lenient=d.lenient, max_images=max_images)

    full_image_id = model.image_token_id if not d.compact_vocab else None
    if d.tokenizer:
        tok = Tokenizer.from_dir(d.tokenizer, **({"image_token_id": full_image_id} if full_image_id else {}))
    else:
        tok = load_default_tokenizer(**({"image_token_id": full_image_id} if full_image_id else {}))

    vocab = None
    if d.compact_vocab:
        path = os.path.join(workdir, VOCAB_FILE)
        inherited = os.path.join(vocab_source_dir, VOCAB_FILE) if vocab_source_dir else None
        if os.path.exists(path):
            vocab = CompactVocab.load(path)
        elif inherited and os.path.exists(inherited):
            vocab = CompactVocab.load(inherited)  # stage 2 keeps the stage-1 numbering
        else:
            ids = collect_token_ids(train_sources + eval_sources, tok)
            vocab = CompactVocab.build(ids, model=model, pad_id=tok.pad_id, eos_id=tok.eos_id,
                                       image_id=tok.image_token_id)
        if jax.process_index() == 0 and not os.path.exists(path):
            os.makedirs(workdir, exist_ok=True)
            vocab.save(path)
        log.info("compact vocabulary: %d of %d rows used", vocab.num_used, model.decoder.vocab_size)
    elif tok.vocab_size > model.decoder.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} ids but the model only {model.decoder.vocab_size} rows; "
                         "use data.compact_vocab=True for small models")
    if jax.process_index() == 0 and not os.path.exists(os.path.join(workdir, TOKENIZER_JSON)):
        tok.save(workdir)  # with vocab.json (compact runs) the run directory loads in predict / eval / the app

    max_seq_len = int(d.max_seq_len or model.decoder.max_position_embeddings)
    common = dict(tokenizer=tok, image_size=model.vision.image_size, image_token_id=tok.image_token_id,
                  tokens_per_image=model.tokens_per_image, max_text_len=int(d.max_text_len),
                  max_seq_len=max_seq_len, max_images=max_images, batch_size=local_batch,
                  grouping=d.grouping, lenient=d.lenient, truncation=d.truncation)

    weighting = str(config.train.get("loss_weighting", "token"))

    def finish(ds):
        ds = ds.map(RemapTokens(vocab)) if vocab is not None else ds
        return ds.map(WeightLossMask(weighting)) if weighting != "token" else ds

    def dataset(sources, seed: int, num_workers: int):
        if not d.get("task_weights"):
            return pipeline.make_dataset(sources, seed=seed, num_workers=num_workers, **common)
        # One granularity per batch, tasks mixed by weight, one static shape per granularity.
        lens = tuple(d.get("granularity_text_len") or ()) or (int(d.max_text_len),) * pipeline.NUM_GRANULARITIES
        return pipeline.make_task_mixture(
            sources, task_weights=dict(d.task_weights), granularity_text_len=lens, tokenizer=tok,
            image_size=model.vision.image_size, image_token_id=tok.image_token_id,
            tokens_per_image=model.tokens_per_image, batch_size=local_batch, seed=seed, lenient=d.lenient,
            truncation=d.truncation, num_workers=num_workers)

    train = finish(dataset(train_sources, int(d.seed), int(d.num_workers)))
    make_eval = None
    if eval_sources:
        eval_ds = finish(dataset(eval_sources, int(d.seed) + 1, 0))
        make_eval = lambda: iter(eval_ds)  # noqa: E731
    return Inputs(train, make_eval, vocab, local_batch)


# ---- host -> device ----------------------------------------------------------------------------

def to_global(batch: Mapping[str, np.ndarray], shardings: Mapping[str, jax.sharding.Sharding],
              global_batch: int) -> dict:
    """Per-process numpy batch -> global arrays (`jax.make_array_from_process_local_data`)."""
    out = {}
    for k, sh in shardings.items():
        x = np.asarray(batch[k])
        out[k] = jax.make_array_from_process_local_data(sh, x, (global_batch,) + x.shape[1:])
    return out


# ---- in-memory batches (tests, benchmarks) -----------------------------------------------------

class RandomBatches:
    """Deterministic random batches that follow the batch contract, generated from (seed, index).

    Global batch i is a function of (seed, i) only; each process takes its rows
    [process_index * local : (process_index + 1) * local], so any process count sees the same
    global batch. Granularity: one per batch, cycling 0, 1, 2 ("grouped"), or per row ("mixed").
    The iterator has `get_state` / `set_state` (`{"index": i}`) like a Grain iterator.
    `nan_at` injects NaN pixels into the listed batch indices (NaN-guard tests).
    """

    def __init__(self, model: ModelConfig, *, global_batch: int, text_len: int, num_images: int = 1,
                 seed: int = 0, grouping: str = "granularity", process_index: int | None = None,
                 process_count: int | None = None, nan_at: Sequence[int] = (), vocab_limit: int | None = None):
        self.model, self.global_batch, self.text_len, self.num_images = model, global_batch, text_len, num_images
        self.seed, self.grouping, self.nan_at = seed, grouping, set(nan_at)
        self.pi = jax.process_index() if process_index is None else process_index
        self.pc = jax.process_count() if process_count is None else process_count
        self.local = global_batch // self.pc
        self.vocab_limit = vocab_limit or min(model.decoder.vocab_size, model.tokenizer_vocab_size)

    def batch(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        b, t, n, s = self.global_batch, self.text_len, self.num_images, self.model.vision.image_size
        reserved = {self.model.image_token_id, self.model.pad_token_id}
        ids = rng.integers(2, self.vocab_limit, (b, t)).astype(np.int32)
        ids[np.isin(ids, list(reserved))] = 2
        lengths = rng.integers(max(n + 4, t // 2), t + 1, (b,))
        attn = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
        for r in range(b):
            ids[r, 1:1 + n] = self.model.image_token_id
            ids[r, lengths[r]:] = self.model.pad_token_id
        loss_mask = ((rng.random((b, t)) < 0.6) & (attn > 0) & (ids != self.model.image_token_id)).astype(np.float32)
        loss_mask[:, 0] = 0.0
        px = rng.uniform(-1, 1, (b, max(n, 1), s, s, 3)).astype(np.float32)
        if index in self.nan_at:
            px[:] = np.nan
        e = max(self.model.gmoe.num_experts, 1)
        gran = (np.full((b,), index % e) if self.grouping == "granularity" else rng.integers(0, e, (b,))).astype(np.int32)
        full = {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask, "pixel_values": px,
                "num_images": np.full((b,), n, np.int32), "granularity": gran}
        sl = slice(self.pi * self.local, (self.pi + 1) * self.local)
        return {k: v[sl] for k, v in full.items()}

    def __iter__(self) -> "RandomBatchIterator":
        return RandomBatchIterator(self)


class RandomBatchIterator:
    def __init__(self, source: RandomBatches):
        self.source, self.index = source, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        out = self.source.batch(self.index)
        self.index += 1
        return out

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.index = int(state["index"])
