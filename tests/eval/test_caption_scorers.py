"""The pure-Python BLEU / ROUGE-L / CIDEr equal pycocoevalcap's scorers, and caption metrics work
without the optional pycocoevalcap package (official mode then says how to get it)."""
import sys

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from rsunivlm_jax.eval import caption_scorers, captions

WORDS = "a the two many planes ship harbor green field road river near next to is are parked white".split()


def _corpus(seed, n):
    rng = np.random.default_rng(seed)

    def sent(lo, hi):
        return " ".join(rng.choice(WORDS, rng.integers(lo, hi)))

    gts = {i: [sent(1, 14) for _ in range(rng.integers(1, 6))] for i in range(n)}
    res = {i: [sent(0, 14)] for i in range(n)}  # includes empty hypotheses
    return gts, res


@pytest.mark.parametrize("seed,n", [(0, 1), (1, 3), (2, 40), (3, 200)])
def test_scorers_equal_pycocoevalcap(seed, n):
    gts, res = _corpus(seed, n)
    np.testing.assert_allclose(caption_scorers.bleu(gts, res, 4), Bleu(4).compute_score(gts, res, verbose=0)[0],
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(caption_scorers.rouge_l(gts, res), Rouge().compute_score(gts, res)[0],
                               rtol=1e-12, atol=1e-15)
    if n > 1:  # pycocoevalcap's CIDEr needs more than one image (its idf uses log(#images))
        np.testing.assert_allclose(caption_scorers.cider(gts, res), Cider().compute_score(gts, res)[0],
                                   rtol=1e-12, atol=1e-15)


def test_caption_metrics_without_pycocoevalcap(monkeypatch):
    for name in [m for m in sys.modules if m == "pycocoevalcap" or m.startswith("pycocoevalcap.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)  # as if the eval extra were not installed
    assert not captions.pycocoevalcap_available()
    preds = ["two planes are parked near the road", "a ship"]
    refs = [["two white planes parked next to a road", "planes near a road"], ["a ship in the harbor"]]
    res = captions.caption_metrics(preds, refs, mode="auto")
    assert res["mode"] == "java_free" and res["METEOR"] is None and 0 < res["Bleu_1"] <= 1 and res["CIDEr"] > 0
    with pytest.raises(RuntimeError, match=r"pip install 'rsunivlm_jax\[eval\]'"):
        captions.caption_metrics(preds, refs, mode="official")
