"""One model serving streamed answers: prompt building, routing, constraints and decoding settings.

Counterpart: the model half of the reference demo's `app.py` (`bot_streaming`: ChatML prompt,
expert from the tag, greedy `generate`), with answers streamed as they are generated
(`rsunivlm_jax.app.stream`). One request decodes at a time (a lock); compiled programs and
constraint tables are shared by every request.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Iterator, Sequence

from rsunivlm_jax import tasks
from rsunivlm_jax.app import stream
from rsunivlm_jax.inference import constrained as C
from rsunivlm_jax.inference.generate import default_max_new_tokens
from rsunivlm_jax.inference.predict import LoadedModel, prompt_message
from rsunivlm_jax.inference.sampling import SamplingParams
from rsunivlm_jax.router import route

EXPERT_NAMES = ("image-level", "region-level", "pixel-level")
MAX_CACHED_CONSTRAINTS = 32


@dataclasses.dataclass(frozen=True)
class Decoding:
    """Per-request decoding settings (the page's switches)."""

    constrained: bool = False
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 0  # 0: the task's default budget
    grid_size: int = tasks.DEFAULT_GRID_SIZE
    seed: int = 0


@dataclasses.dataclass
class Progress:
    """The answer so far. `done` on the last one, which also carries the timing."""

    text: str
    tokens: int
    task: str | None
    granularity: int
    constrained: bool
    max_new_tokens: int
    done: bool = False
    finished: bool = False  # the model ended the answer itself (eos) before the budget
    seconds: float = 0.0
    first_token_seconds: float | None = None


class Engine:
    """A loaded checkpoint answering one request at a time."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self.lock = threading.Lock()
        self._constraints: dict[tuple, C.Constraint] = {}

    def defaults(self, grid_size: int = tasks.DEFAULT_GRID_SIZE) -> Decoding:
        """The page's initial settings: greedy (as the reference demo), constrained, and the
        checkpoint's temperature / top-k / top-p / repetition penalty (`generation_config.json`)."""
        sp = self.model.sampling
        return Decoding(constrained=True, do_sample=False, temperature=float(sp.temperature), top_k=int(sp.top_k),
                        top_p=float(sp.top_p), repetition_penalty=float(sp.repetition_penalty),
                        grid_size=int(grid_size))

    def sampling(self, d: Decoding) -> SamplingParams:
        """The request's `SamplingParams` (raises ValueError naming a bad value)."""
        return SamplingParams(do_sample=bool(d.do_sample), temperature=float(d.temperature), top_k=int(d.top_k),
                              top_p=float(d.top_p), repetition_penalty=float(d.repetition_penalty),
                              penalize_prompt=self.model.sampling.penalize_prompt)

    def constraint(self, message: str, grid_size: int) -> C.Constraint | None:
        """The grammar of a [VG] / [SEG] message (cached per kind, label and grid), else None."""
        tag = tasks.leading_tag(message)
        if tag == "[VG]":
            key = ("vg",)
        elif tag == "[SEG]":
            key = ("seg", C.seg_label_from_prompt(message), int(grid_size))
        else:
            return None
        if key not in self._constraints:
            if len(self._constraints) >= MAX_CACHED_CONSTRAINTS:
                self._constraints.pop(next(iter(self._constraints)))
            m = self.model
            self._constraints[key] = C.for_prompts(m.tokenizer, m.config.decoder.vocab_size, [message],
                                                   grid_size=int(grid_size), eos_ids=m.eos_ids)
        return self._constraints[key]

    def warm_up(self, requests: Sequence[tuple[Sequence, str, Decoding]]) -> int:
        """Answers each (images, prompt, decoding) once and drops the answer, so that the programs of
        those shapes are compiled before the first visitor asks. Returns how many were answered."""
        done = 0
        for images, prompt, decoding in requests:
            for _ in self.answer(images, prompt, decoding):
                pass
            done += 1
        return done

    def answer(self, images: Sequence, prompt: str, decoding: Decoding = Decoding()) -> Iterator[Progress]:
        """Streams the answer to `prompt` on PIL `images` (1 or 2): one `Progress` per token, then a
        final one with `done=True`. Raises ValueError (bad prompt or settings) before the first."""
        from rsunivlm_jax.data import preprocess
        if not 1 <= len(images) <= 2:
            raise ValueError(f"expected one or two images, got {len(images)}")
        m = self.model
        message = prompt_message(prompt, len(images))
        task = tasks.task_of_prompt(message, len(images))
        budget = int(decoding.max_new_tokens) or default_max_new_tokens(task, int(decoding.grid_size))
        sp = self.sampling(decoding)
        con = self.constraint(message, decoding.grid_size) if decoding.constrained else None
        g = route(message)
        enc = m.tokenizer.encode_conversation([{"from": "human", "value": message}], add_generation_prompt=True)
        with self.lock:
            t0 = time.perf_counter()
            pixels = preprocess.preprocess_images(list(images), m.config.vision.image_size, len(images))
            tokens = stream.stream_tokens(m.graphdef, m.params, m.config, enc.input_ids, pixels, g,
                                          max_new_tokens=budget, eos_ids=m.eos_ids, sampling_params=sp,
                                          rng=int(decoding.seed), constraint=con)
            eos = set(m.eos_ids)
            ids: list[int] = []
            first = None
            finished = False
            base = dict(task=task, granularity=g, constrained=con is not None, max_new_tokens=budget)
            for tok in tokens:
                first = time.perf_counter() - t0 if first is None else first
                if tok in eos:
                    finished = True
                    n = len(ids) + 1
                    break
                ids.append(tok)
                n = len(ids)
                yield Progress(m.tokenizer.decode(ids, skip_special_tokens=True), n, **base)
            yield Progress(m.tokenizer.decode(ids, skip_special_tokens=True).strip(), n, done=True, finished=finished,
                           seconds=time.perf_counter() - t0, first_token_seconds=first, **base)
