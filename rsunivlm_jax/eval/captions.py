"""Caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D), in two labelled modes.

* ``"official"`` (``java`` on PATH and the optional `pycocoevalcap` package, the ``eval`` extra):
  exactly what `pycocoevalcap.eval.COCOEvalCap` does - Stanford PTB tokenizer (Java) on references
  and predictions, then `Bleu(4)`, `Meteor` (Java), `Rouge` and `Cider`. SPICE is never run (its
  CoreNLP jars download on first use; offline here).
* ``"java_free"``: a simple tokenizer (NFKC, lower-case, punctuation -> space) and the pure-Python
  BLEU / ROUGE-L / CIDEr of `rsunivlm_jax.eval.caption_scorers` (pycocoevalcap's arithmetic, no
  optional package needed); METEOR is ``None``. Numbers differ slightly from the official ones
  (PTB splits e.g. "don't" -> "do n't"); the result's ``mode`` says which ran.

`pycocoevalcap` is imported only when official metrics are computed; ``"auto"`` picks official
only when both Java and the package are there.

Keys follow COCOEvalCap: ``Bleu_1 .. Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr`` (fractions, CIDEr
on its natural 0-10 scale).
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import unicodedata
from typing import Sequence

from rsunivlm_jax.eval import caption_scorers

OFFICIAL, JAVA_FREE = "official", "java_free"
METRIC_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
MODE_NOTES = {
    OFFICIAL: "official pycocoevalcap: PTB tokenizer + METEOR (Java), BLEU/ROUGE-L/CIDEr-D",
    JAVA_FREE: ("Java-free fallback: simple lower-case/punctuation tokenizer instead of PTB, "
                "pycocoevalcap BLEU/ROUGE-L/CIDEr-D, METEOR not computed; not comparable digit-for-digit "
                "with official numbers"),
}

_PUNCT_RE = re.compile(r"[^\w\s]|_")
_meteor_scorer = None  # one JVM per process (starting METEOR takes ~6 s)


def java_available() -> bool:
    """True when a ``java`` executable is on PATH (needed by the PTB tokenizer and METEOR)."""
    return shutil.which("java") is not None


def pycocoevalcap_available() -> bool:
    """True when the optional `pycocoevalcap` package (the ``eval`` extra) is installed."""
    return importlib.util.find_spec("pycocoevalcap") is not None


def resolve_mode(mode: str = "auto") -> str:
    """``"auto"`` -> official when Java and pycocoevalcap are present, else java_free; validates
    explicit modes."""
    if mode == "auto":
        return OFFICIAL if java_available() and pycocoevalcap_available() else JAVA_FREE
    if mode not in (OFFICIAL, JAVA_FREE):
        raise ValueError(f"caption metric mode must be 'auto', {OFFICIAL!r} or {JAVA_FREE!r}, got {mode!r}")
    if mode == OFFICIAL and not pycocoevalcap_available():
        raise RuntimeError("official caption metrics need the pycocoevalcap package: "
                           "pip install 'rsunivlm_jax[eval]' (or use mode 'java_free')")
    if mode == OFFICIAL and not java_available():
        raise RuntimeError("official caption metrics need `java` on PATH (PTB tokenizer, METEOR); "
                           "install a JRE (e.g. openjdk-17-jre-headless) or use mode='java_free'")
    return mode


def simple_tokenize(text: str) -> str:
    """Java-free tokenizer: NFKC, lower-case, punctuation -> space, tokens joined by one space."""
    if not isinstance(text, str):
        return ""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT_RE.sub(" ", text).split())


def ptb_tokenize(captions: dict[int, list[str]]) -> dict[int, list[str]]:
    """PTB-tokenise ``{id: [caption, ...]}`` with pycocoevalcap's `PTBTokenizer` (Java)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    wrapped = {k: [{"caption": c if isinstance(c, str) else ""} for c in v] for k, v in captions.items()}
    out = PTBTokenizer().tokenize(wrapped)
    # Guard against the wrapper's zip truncation: every id must come back with all its captions.
    for k, v in captions.items():
        if len(out.get(k, [])) != len(v):
            raise RuntimeError(f"PTB tokenizer returned {len(out.get(k, []))} captions for id {k}, "
                               f"expected {len(v)}")
    return out


def get_meteor():
    """The process-wide pycocoevalcap `Meteor` scorer (starts the JVM on first use)."""
    global _meteor_scorer
    if _meteor_scorer is None:
        from pycocoevalcap.meteor.meteor import Meteor

        _meteor_scorer = Meteor()
    return _meteor_scorer


def caption_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]], mode: str = "auto",
                    meteor=None) -> dict:
    """Corpus caption metrics of `predictions` against their reference lists.

    predictions: one generated caption per sample.
    references: per sample a non-empty list of reference captions.
    mode: ``"auto"`` | ``"official"`` | ``"java_free"`` (see the module docstring).
    meteor: an existing pycocoevalcap `Meteor` instance to reuse (official mode); default: a
      process-wide one.
    Returns ``{"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "CIDEr_per_sample", "mode",
    "note", "n"}``; metric values are None when there are no samples, METEOR is None in java_free
    mode. ``CIDEr_per_sample`` lists each sample's CIDEr (idf from the whole set's references);
    ``CIDEr`` is their mean, as pycocoevalcap's `Cider.compute_score` returns both.
    """
    mode = resolve_mode(mode)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"sample {i}: references must be a non-empty list of strings, got {refs!r}")
    out: dict = {k: None for k in METRIC_KEYS}
    out.update(CIDEr_per_sample=[], mode=mode, note=MODE_NOTES[mode], n=len(predictions))
    if not predictions:
        return out

    gts_raw = {i: [str(r) for r in refs] for i, refs in enumerate(references)}
    res_raw = {i: [p if isinstance(p, str) else ""] for i, p in enumerate(predictions)}
    if mode == OFFICIAL:
        gts, res = ptb_tokenize(gts_raw), ptb_tokenize(res_raw)
    else:
        gts = {k: [simple_tokenize(c) for c in v] for k, v in gts_raw.items()}
        res = {k: [simple_tokenize(c) for c in v] for k, v in res_raw.items()}

    if mode == OFFICIAL:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        bleu = Bleu(4).compute_score(gts, res, verbose=0)[0]
        rouge, (cider, cider_per_sample) = Rouge().compute_score(gts, res)[0], Cider().compute_score(gts, res)
    else:
        bleu = caption_scorers.bleu(gts, res, 4)
        rouge, cider_per_sample = caption_scorers.rouge_l(gts, res), caption_scorers.cider_scores(gts, res)
        cider = caption_scorers.corpus_cider(cider_per_sample)
    for n, value in enumerate(bleu, start=1):
        out[f"Bleu_{n}"] = float(value)
    out["ROUGE_L"], out["CIDEr"] = float(rouge), float(cider)
    out["CIDEr_per_sample"] = [float(v) for v in cider_per_sample]
    if mode == OFFICIAL:
        scorer = meteor if meteor is not None else get_meteor()
        out["METEOR"] = float(scorer.compute_score(gts, res)[0])
    return out
