"""Pure-Python BLEU-1..4, ROUGE-L and CIDEr(-D), the same arithmetic as pycocoevalcap's scorers.

Ported from pycocoevalcap 1.2 (`bleu/bleu_scorer.py` with the "closest" reference length,
`rouge/rouge.py` with beta 1.2, `cider/cider_scorer.py` with n 4, sigma 6; coco-caption, BSD
2-clause) so that the Java-free caption metrics need no optional package. The quirks are kept on
purpose (ROUGE-L splits on single spaces; CIDEr's length penalty counts bigrams), and
tests/eval/test_caption_scorers.py checks the numbers against pycocoevalcap itself.

Inputs are pycocoevalcap's: ``gts = {key: [tokenised reference, ...]}`` and
``res = {key: [tokenised hypothesis]}`` with the same keys.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Mapping, Sequence

import numpy as np


def _check(gts: Mapping, res: Mapping) -> list:
    if gts.keys() != res.keys():
        raise ValueError("references and hypotheses must have the same keys")
    for k in gts:
        if not isinstance(res[k], list) or len(res[k]) != 1 or not isinstance(gts[k], list) or not gts[k]:
            raise ValueError(f"key {k!r}: expected one hypothesis and at least one reference")
    return list(gts.keys())


def _ngrams(words: Sequence[str], n: int) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


def bleu(gts: Mapping, res: Mapping, n: int = 4) -> list[float]:
    """Corpus BLEU-1..n (pycocoevalcap `Bleu(n)`, reference length "closest" per segment)."""
    small, tiny = 1e-9, 1e-15
    guess, correct = [0] * n, [0] * n
    testlen_total = reflen_total = 0
    for key in _check(gts, res):
        words = res[key][0].split()
        testlen = len(words)
        counts = _ngrams(words, n)
        maxcounts: dict = {}
        reflens = []
        for ref in gts[key]:
            rwords = ref.split()
            reflens.append(len(rwords))
            for g, c in _ngrams(rwords, n).items():
                maxcounts[g] = max(maxcounts.get(g, 0), c)
        reflen_total += min((abs(length - testlen), length) for length in reflens)[1]
        testlen_total += testlen
        for k in range(n):
            guess[k] += max(0, testlen - k)
        for g, c in counts.items():
            correct[len(g) - 1] += min(maxcounts.get(g, 0), c)
    out, acc = [], 1.0
    for k in range(n):
        acc *= float(correct[k] + tiny) / (guess[k] + small)
        out.append(acc ** (1.0 / (k + 1)))
    ratio = (testlen_total + tiny) / (reflen_total + small)
    if ratio < 1:
        out = [b * math.exp(1 - 1 / ratio) for b in out]
    return out


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(gts: Mapping, res: Mapping, beta: float = 1.2) -> float:
    """Mean sentence ROUGE-L F-measure (pycocoevalcap `Rouge`: max precision / recall over refs)."""
    scores = []
    for key in _check(gts, res):
        cand = res[key][0].split(" ")
        prec, rec = [], []
        for ref in gts[key]:
            toks = ref.split(" ")
            lcs = _lcs(toks, cand)
            prec.append(lcs / float(len(cand)))
            rec.append(lcs / float(len(toks)))
        p, r = max(prec), max(rec)
        scores.append(((1 + beta ** 2) * p * r) / float(r + beta ** 2 * p) if p != 0 and r != 0 else 0.0)
    return float(sum(scores) / len(scores))


def cider(gts: Mapping, res: Mapping, n: int = 4, sigma: float = 6.0) -> float:
    """Corpus-mean CIDEr (pycocoevalcap `Cider`: tf-idf over the references of the whole set,
    cosine per n-gram order, Gaussian length penalty, x10)."""
    return corpus_cider(cider_scores(gts, res, n, sigma))


def corpus_cider(scores: Sequence[float]) -> float:
    """The corpus CIDEr of per-sample scores: their mean, with pycocoevalcap's ``np.mean``."""
    return float(np.mean(np.array(scores, dtype=np.float64)))


def cider_scores(gts: Mapping, res: Mapping, n: int = 4, sigma: float = 6.0) -> list[float]:
    """Per-sample CIDEr (the second value of pycocoevalcap's `Cider.compute_score`), in key order."""
    keys = _check(gts, res)
    crefs = [[_ngrams(r.split(), n) for r in gts[k]] for k in keys]
    ctest = [_ngrams(res[k][0].split(), n) for k in keys]
    df: Counter = Counter()
    for refs in crefs:
        for g in {g for ref in refs for g in ref}:
            df[g] += 1
    ref_len = math.log(float(len(crefs)))

    def vec(counts):
        v = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in counts.items():
            k = len(g) - 1
            v[k][g] = float(tf) * (ref_len - math.log(max(1.0, df[g])))
            norm[k] += v[k][g] ** 2
            if k == 1:
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for test, refs in zip(ctest, crefs):
        vh, nh, lh = vec(test)
        total = [0.0] * n
        for ref in refs:
            vr, nr, lr = vec(ref)
            delta = float(lh - lr)
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * math.e ** (-(delta ** 2) / (2 * sigma ** 2))
        scores.append(sum(total) / n / len(refs) * 10.0)
    return scores
