"""Grain pipelines: instruction records -> static-shape training batches / generation prompts.

Per source (a `RecordSource`, a `TfdsSource`, or a path to load) and, by default, per granularity:

    MapDataset.source -> shuffle(seed) -> repeat -> shard by JAX process (ShardByBlocks)
      -> map(ToExample: decode + preprocess images, tokenise, mask, pad) -> to_iter_dataset
      -> drop skipped samples -> batch (homogeneous in granularity) -> weighted mix
      -> optional mp_prefetch (worker processes)

Batches are dicts of numpy arrays with the shapes of the batch element contract
(docs/data.md): ``input_ids int32[B, T]``, ``attention_mask int32[B, T]``,
``loss_mask float32[B, T]``, ``pixel_values float32[B, N_max, S, S, 3]``, ``num_images int32[B]``,
``granularity int32[B]``. Deterministic for a seed; ``iter(ds).get_state()`` / ``set_state(...)``
resume exactly.

Counterpart: LLaVA-NeXT `LazySupervisedDataset` + `DataCollatorForSupervisedDataset` +
`LengthGroupedSampler(group_by_modality)`; RSUniVLM trains with batches of one granularity (the
released G-MoE routes a whole sequence to one expert).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from rsunivlm_jax.data import preprocess
from rsunivlm_jax.data.records import RecordError, RecordSource, SkipReport, load_source
from rsunivlm_jax.data.tokenizer import Tokenizer
from rsunivlm_jax.router import NUM_GRANULARITIES, route

log = logging.getLogger(__name__)

EXAMPLE_KEYS = ("input_ids", "attention_mask", "loss_mask", "pixel_values", "num_images", "granularity")


@dataclass(frozen=True)
class ExampleSpec:
    """Numbers that fix the static shapes (from the model config; never hard-coded here)."""
    image_size: int
    image_token_id: int
    tokens_per_image: int
    max_text_len: int
    max_seq_len: int
    max_images: int
    truncation: str = "tail"          # "tail": cut the end if no image is cut; "reject": skip
    max_pixels: int = preprocess.DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if self.truncation not in ("tail", "reject"):
            raise ValueError(f"truncation must be 'tail' or 'reject', got {self.truncation!r}")
        if self.max_text_len <= 0 or self.max_seq_len <= 0 or self.tokens_per_image <= 0:
            raise ValueError("max_text_len, max_seq_len and tokens_per_image must be positive")

    def shapes(self) -> dict:
        """Per-example shapes and dtypes (without the batch axis)."""
        t, n, s = self.max_text_len, self.max_images, self.image_size
        return {"input_ids": ((t,), np.int32), "attention_mask": ((t,), np.int32),
                "loss_mask": ((t,), np.float32), "pixel_values": ((n, s, s, 3), np.float32),
                "num_images": ((), np.int32), "granularity": ((), np.int32)}


def load_images(record: dict, spec: ExampleSpec) -> list:
    """Decoded RGB PIL images of a record (paths, or ``image_bytes`` from TFDS); RecordError on failure."""
    srcs = record.get("image_bytes")
    if srcs is None:
        srcs = record.get("images", [])
    names = record.get("image") or [f"image {i}" for i in range(len(srcs))]
    if len(srcs) > spec.max_images:
        raise RecordError("too_many_images", f"{len(srcs)} images > max_images={spec.max_images}",
                          record.get("id"), record.get("source"))
    out = []
    for i, src in enumerate(srcs):
        try:
            out.append(preprocess.open_image(src, max_pixels=spec.max_pixels,
                                             name=str(names[i]) if i < len(names) else None))
        except preprocess.ImageDecodeError as e:
            raise RecordError(e.reason, str(e), record.get("id"), record.get("source")) from None
    return out


def fit_length(ids: np.ndarray, targets: np.ndarray, answer: np.ndarray, num_images: int,
               spec: ExampleSpec, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """Applies the length limits: text <= max_text_len and text + expanded images <= max_seq_len.

    Truncation cuts the tail only when no image placeholder is cut and an answer token remains;
    otherwise the sample is rejected with reason ``over_length``.
    """
    extra = num_images * (spec.tokens_per_image - 1)
    limit = min(spec.max_text_len, spec.max_seq_len - extra)
    n = len(ids)
    if n <= limit:
        return ids, targets
    rid, src = record.get("id"), record.get("source")
    detail = (f"{n} text tokens + {extra} image positions > limits "
              f"(max_text_len={spec.max_text_len}, max_seq_len={spec.max_seq_len})")
    if spec.truncation == "reject" or limit <= 0:
        raise RecordError("over_length", detail, rid, src)
    img_pos = np.flatnonzero(ids == spec.image_token_id)
    if img_pos.size and img_pos[-1] >= limit:
        raise RecordError("over_length", detail + "; truncation would cut through an image", rid, src)
    if not answer[:limit].any():
        raise RecordError("over_length", detail + "; no answer token left after truncation", rid, src)
    return ids[:limit], targets[:limit]


def build_example(record: dict, tokenizer: Tokenizer, spec: ExampleSpec) -> dict:
    """One record -> one static-shape training example (numpy). Raises RecordError."""
    images = load_images(record, spec)
    enc = tokenizer.encode_conversation(record["conversations"])
    if enc.num_images != len(images):
        raise RecordError("placeholder_mismatch", f"{enc.num_images} placeholder(s) for {len(images)} image(s)",
                          record.get("id"), record.get("source"))
    ids, tgt = enc.input_ids, enc.targets
    answer = tgt & ~np.isin(ids, [tokenizer.newline_id, tokenizer.im_start_id, tokenizer.eos_id])
    ids, tgt = fit_length(ids, tgt, answer, len(images), spec, record)
    t = spec.max_text_len
    input_ids = np.full((t,), tokenizer.pad_id, dtype=np.int32)
    input_ids[:len(ids)] = ids
    attention = np.zeros((t,), dtype=np.int32)
    attention[:len(ids)] = 1
    loss_mask = np.zeros((t,), dtype=np.float32)
    loss_mask[:len(ids)] = tgt
    loss_mask[0] = 0.0  # the first token has no predecessor, so it is never a target
    g = record.get("granularity")
    if g is None:
        g = route(first_user_message(record))
    return {"input_ids": input_ids, "attention_mask": attention, "loss_mask": loss_mask,
            "pixel_values": preprocess.preprocess_images(images, spec.image_size, spec.max_images),
            "num_images": np.int32(len(images)), "granularity": np.int32(g)}


def first_user_message(record: dict) -> str:
    for t in record.get("conversations", []):
        if t.get("from") in ("human", "user"):
            return t.get("value", "")
    return ""


class ToExample(grain.transforms.Map):
    """Grain map: record -> example; in lenient mode a bad sample becomes None (dropped, logged)."""

    def __init__(self, tokenizer: Tokenizer, spec: ExampleSpec, lenient: bool = True):
        self.tokenizer, self.spec, self.lenient = tokenizer, spec, lenient
        self.report = SkipReport()

    def map(self, record: dict):
        try:
            ex = build_example(record, self.tokenizer, self.spec)
        except RecordError as e:
            if not self.lenient:
                raise
            self.report.add(e)
            log.warning("skipping sample (%s): %s", e.reason, e)
            return None
        self.report.kept += 1
        return ex


def _is_example(x: Any) -> bool:
    return x is not None


class _Subset:
    """Random-access view of some indices of a source (one granularity of it)."""

    def __init__(self, source, indices: Sequence[int]):
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[i])]


def source_granularities(source) -> np.ndarray:
    """Granularity of every record of a source (from the router on the first user message)."""
    if hasattr(source, "granularities"):
        return np.asarray(source.granularities(), dtype=np.int32)
    return np.asarray([r["granularity"] if r.get("granularity") is not None
                       else route(first_user_message(r)) for r in source], dtype=np.int32)


def _resolve_sources(sources, lenient: bool, max_images: int) -> list:
    out = []
    for s in sources if isinstance(sources, (list, tuple)) else [sources]:
        if isinstance(s, (str, os.PathLike)):
            s = load_source(s, strict=not lenient, max_images=max_images)
        if isinstance(s, RecordSource) and s.report.skipped:
            log.warning("source %s: %s", s.name, s.report.summary())
        if len(s) == 0:
            raise ValueError(f"source {s!r} has no usable records")
        out.append(s)
    return out


class ShardByBlocks(grain.MapDataset):
    """Process shard `index` of `count`, in blocks of `block` elements: of every `count * block`
    consecutive elements this shard takes the `index`-th run of `block`. With `block` = the local
    batch size, the shards' batches concatenated in process order are exactly the batches one
    process makes with the global batch size (a strided `ds[index::count]` interleaves their rows),
    and every shard has the same length (a trailing partial group is dropped)."""

    def __init__(self, parent: grain.MapDataset, index: int, count: int, block: int):
        super().__init__(parent)
        if not 0 <= index < count or block < 1:
            raise ValueError(f"shard {index} of {count} with block {block}: need 0 <= index < count, block >= 1")
        self._index, self._count, self._block = index, count, block
        self._length = len(parent) // (count * block) * block

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        group, offset = divmod(index, self._block)
        return self._parent[(group * self._count + self._index) * self._block + offset]

    def __str__(self) -> str:
        return f"ShardByBlocks(index={self._index}, count={self._count}, block={self._block})"


def _shard(shard_index, shard_count) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax
        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    return shard_index, shard_count


def make_dataset(sources, *, tokenizer: Tokenizer, image_size: int, image_token_id: int,
                 tokens_per_image: int, max_text_len: int, max_seq_len: int, max_images: int,
                 batch_size: int, seed: int, grouping: str = "granularity",
                 weights: Sequence[float] | None = None, num_workers: int = 0, lenient: bool = True,
                 shard_index: int | None = None, shard_count: int | None = None,
                 num_epochs: int | None = None, truncation: str = "tail",
                 max_pixels: int = preprocess.DEFAULT_MAX_PIXELS,
                 worker_buffer_size: int = 2, read_threads: int = 2,
                 read_buffer_size: int | None = None) -> grain.IterDataset:
    """Training pipeline over weighted sources; returns a Grain IterDataset of numpy dict batches.

    grouping="granularity" (default): every batch holds one granularity (router expert);
    "mixed": batches mix granularities. `weights` (per source; default: proportional to the number
    of records) set the mixture. `num_epochs=None` repeats forever. Sharded by JAX process unless
    shard_index/shard_count are given (`ShardByBlocks`: with `batch_size` the per-process batch, the
    processes' batches side by side are the global batches of one process; exact for one source or
    granularity grouping while no sample is skipped). Each component decodes ahead with `read_threads` threads
    into a buffer of `read_buffer_size` examples (default: one batch); `num_workers` > 0 adds
    worker processes (`mp_prefetch`). In lenient mode skipped samples are logged as warnings
    (counts live in each process's `ToExample.report`).
    """
    if grouping not in ("granularity", "mixed"):
        raise ValueError(f"grouping must be 'granularity' or 'mixed', got {grouping!r}")
    if tokenizer.image_token_id != image_token_id:
        raise ValueError(f"tokenizer.image_token_id={tokenizer.image_token_id} != image_token_id={image_token_id}")
    spec = ExampleSpec(image_size, image_token_id, tokens_per_image, max_text_len, max_seq_len,
                       max_images, truncation, max_pixels)
    srcs = _resolve_sources(sources, lenient, max_images)
    if weights is None:
        weights = [float(len(s)) for s in srcs]
    if len(weights) != len(srcs) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights {list(weights)} must be non-negative, one per source ({len(srcs)})")
    shard_index, shard_count = _shard(shard_index, shard_count)
    to_example = ToExample(tokenizer, spec, lenient)
    read = grain.ReadOptions(num_threads=read_threads,
                             prefetch_buffer_size=read_buffer_size or batch_size)

    def stream(src, comp_seed: int) -> grain.IterDataset:
        ds = grain.MapDataset.source(src).shuffle(seed=comp_seed).repeat(num_epochs)
        ds = ShardByBlocks(ds, shard_index, shard_count, batch_size).map(to_example)
        return ds.to_iter_dataset(read).filter(_is_example)

    components, comp_weights = [], []
    for k, (src, w) in enumerate(zip(srcs, weights)):
        if w == 0:
            continue
        if grouping == "mixed":
            components.append(stream(src, seed * 1_000_003 + k))
            comp_weights.append(w)
            continue
        gran = source_granularities(src)
        for g in range(NUM_GRANULARITIES):
            idx = np.flatnonzero(gran == g)
            if idx.size == 0:
                continue
            comp = stream(_Subset(src, idx), seed * 1_000_003 + k * NUM_GRANULARITIES + g)
            components.append(comp.batch(batch_size, drop_remainder=True))
            comp_weights.append(w * idx.size / len(src))
    if len(components) == 1:
        ds = components[0]
    else:
        ds = grain.IterDataset.mix(components, comp_weights)
    if grouping == "mixed":
        ds = ds.batch(batch_size, drop_remainder=True)
    if num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                          per_worker_buffer_size=worker_buffer_size))
    return ds


def make_task_mixture(sources, *, task_weights, granularity_text_len: Sequence[int], tokenizer: Tokenizer,
                      image_size: int, image_token_id: int, tokens_per_image: int, batch_size: int, seed: int,
                      lenient: bool = True, truncation: str = "tail", num_workers: int = 0,
                      shard_index: int | None = None, shard_count: int | None = None) -> grain.IterDataset:
    """Training batches of one granularity each, with the tasks of a granularity mixed by weight.

    task_weights: ``{task: weight}`` (records need a ``task`` field; tasks missing or at 0 are
    left out). Granularities are drawn in proportion to their tasks' summed weights. Each
    granularity g has its own static shape: `granularity_text_len[g]` text slots and image slots
    for its tasks' largest image count (so image- and region-level batches need not carry the
    long text slots of masks: one compiled step per granularity). Components follow
    `tasks.TASKS_BY_ANSWER`; component g is seeded with ``seed * 10 + g``.
    """
    from rsunivlm_jax import tasks

    unknown = sorted(set(task_weights) - set(tasks.TASKS))
    if unknown:
        raise ValueError(f"task_weights: unknown task(s) {unknown}; expected some of {tasks.TASKS}")
    if len(granularity_text_len) != NUM_GRANULARITIES:
        raise ValueError(f"granularity_text_len needs {NUM_GRANULARITIES} lengths, got {tuple(granularity_text_len)}")
    srcs = _resolve_sources(sources, lenient, max(tasks.TASK_NUM_IMAGES.values()))
    for src in srcs:
        if not isinstance(src, RecordSource):
            raise ValueError(f"a task mixture reads record files (JSONL / JSON), not {src!r}")
    weights = {t: float(task_weights.get(t, 0.0)) for t in tasks.TASKS_BY_ANSWER}
    parts, part_weights = [], []
    for g in range(NUM_GRANULARITIES):
        members = [t for t in tasks.TASKS_BY_ANSWER if weights[t] > 0 and tasks.TASK_GRANULARITY[t] == g]
        kept = []
        for t in members:
            for src in srcs:
                recs = [r for r in src.records if r.get("task") == t]
                if recs:
                    kept.append((RecordSource(f"{src.name}-{t}", src.root, recs, src.report), t))
        if not kept:
            continue
        text_len, slots = int(granularity_text_len[g]), max(tasks.TASK_NUM_IMAGES[t] for _, t in kept)
        totals = {t: sum(len(s) for s, u in kept if u == t) for _, t in kept}
        comp_weights = [weights[t] if len(s) == totals[t] else weights[t] * len(s) / totals[t] for s, t in kept]
        parts.append(make_dataset([s for s, _ in kept], weights=comp_weights, seed=seed * 10 + g,
                                  max_text_len=text_len, max_images=slots, max_seq_len=text_len + slots * tokens_per_image,
                                  tokenizer=tokenizer, image_size=image_size, image_token_id=image_token_id,
                                  tokens_per_image=tokens_per_image, batch_size=batch_size, grouping="mixed",
                                  lenient=lenient, truncation=truncation, num_workers=0,
                                  shard_index=shard_index, shard_count=shard_count))
        part_weights.append(sum(weights[t] for t in members if t in totals))
    if not parts:
        raise ValueError(f"no records of a task with a positive weight in {weights}")
    ds = parts[0] if len(parts) == 1 else grain.IterDataset.mix(parts, part_weights)
    if num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return ds


# --------------------------------------------------------------------------------------------
# Generation prompts (evaluation)
# --------------------------------------------------------------------------------------------

def prompt_turns(conversations: Sequence[dict]) -> tuple[list[dict], str | None]:
    """Splits a conversation into the prompt (up to the last user turn) and the reference answer."""
    turns = list(conversations)
    answer = None
    if turns and turns[-1].get("from") in ("gpt", "assistant"):
        answer = turns[-1].get("value")
        turns = turns[:-1]
    return turns, answer


def build_eval_example(record: dict, tokenizer: Tokenizer, spec: ExampleSpec, pad_side: str = "left") -> dict:
    """A generation prompt: ChatML up to ``<|im_start|>assistant\\n``, padded to max_text_len.

    Besides the contract arrays (no ``loss_mask``) it carries ``prompt_len``, ``id``, ``task``,
    ``gt``, ``answer`` (reference text or None) and ``prompt`` (first user message).
    """
    images = load_images(record, spec)
    turns, answer = prompt_turns(record["conversations"])
    enc = tokenizer.encode_conversation(turns, add_generation_prompt=True)
    if enc.num_images != len(images):
        raise RecordError("placeholder_mismatch", f"{enc.num_images} placeholder(s) for {len(images)} image(s)",
                          record.get("id"), record.get("source"))
    n = len(enc.input_ids)
    extra = len(images) * (spec.tokens_per_image - 1)
    if n > spec.max_text_len or n + extra > spec.max_seq_len:
        raise RecordError("over_length", f"prompt of {n} tokens + {extra} image positions exceeds "
                          f"max_text_len={spec.max_text_len} / max_seq_len={spec.max_seq_len}",
                          record.get("id"), record.get("source"))
    t = spec.max_text_len
    input_ids = np.full((t,), tokenizer.pad_id, dtype=np.int32)
    attention = np.zeros((t,), dtype=np.int32)
    sl = slice(t - n, t) if pad_side == "left" else slice(0, n)
    input_ids[sl] = enc.input_ids
    attention[sl] = 1
    user = first_user_message({"conversations": turns})
    g = record.get("granularity")
    return {"input_ids": input_ids, "attention_mask": attention,
            "pixel_values": preprocess.preprocess_images(images, spec.image_size, spec.max_images),
            "num_images": np.int32(len(images)),
            "granularity": np.int32(route(user) if g is None else g),
            "prompt_len": np.int32(n), "id": record.get("id"), "task": record.get("task"),
            "gt": record.get("gt"), "answer": answer, "prompt": user}


def make_eval_examples(records, *, tokenizer: Tokenizer, image_size: int, image_token_id: int,
                       tokens_per_image: int, max_text_len: int, max_seq_len: int, max_images: int,
                       lenient: bool = True, pad_side: str = "left", report: SkipReport | None = None,
                       max_pixels: int = preprocess.DEFAULT_MAX_PIXELS) -> Iterator[dict]:
    """Yields generation prompts (see `build_eval_example`) for validated records, in order.

    `records`: a `RecordSource`, a list of validated records, or a path. Lenient mode skips bad
    samples and counts them in `report`; strict mode raises `RecordError`.
    """
    if pad_side not in ("left", "right"):
        raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
    if tokenizer.image_token_id != image_token_id:
        raise ValueError(f"tokenizer.image_token_id={tokenizer.image_token_id} != image_token_id={image_token_id}")
    spec = ExampleSpec(image_size, image_token_id, tokens_per_image, max_text_len, max_seq_len, max_images,
                       "reject", max_pixels)
    if isinstance(records, (str, os.PathLike)):
        records = load_source(records, strict=not lenient, max_images=max_images)
    report = report if report is not None else SkipReport()
    for rec in records:
        try:
            ex = build_eval_example(rec, tokenizer, spec, pad_side)
        except RecordError as e:
            if not lenient:
                raise
            report.add(e)
            log.warning("skipping eval sample (%s): %s", e.reason, e)
            continue
        report.kept += 1
        yield ex


def collate_eval(examples: Sequence[dict]) -> dict:
    """Stacks eval examples: arrays along a new batch axis, metadata as lists."""
    out = {}
    for k in examples[0]:
        vals = [e[k] for e in examples]
        out[k] = np.stack(vals) if isinstance(vals[0], (np.ndarray, np.generic)) else vals
    return out


__all__ = ["ExampleSpec", "ToExample", "build_example", "build_eval_example", "collate_eval",
           "make_dataset", "make_eval_examples", "EXAMPLE_KEYS"]
