"""Caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr through pycocoevalcap, and CIDEr-D over a corpus.

Scores are reported x100 (BLEU-4 22.0 means 0.220), as captioning papers do. The PTB tokenizer and METEOR
need Java; without it, captions are tokenised in Python and METEOR is left out. This module imports nothing
else from the project: training scores its validation captions here without loading the captioning code.
"""
from __future__ import annotations

import io
import shutil
from contextlib import redirect_stdout
from functools import lru_cache

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer, cook_refs
from pycocoevalcap.rouge.rouge import Rouge

# The PTB tokenizer without Java: Stanford's PTBTokenizer conventions (as pycocoevalcap runs it) through nltk's
# TreebankWordTokenizer, which needs no data download. On the 5,000 Flickr8k dev captions both give the same
# tokens and scores (tools/compare_tokenizers.py). core.data.vocabulary trains on these same tokens.
# what pycocoevalcap's PTBTokenizer removes after tokenising (it keeps brackets, as -lrb- -rrb-)
_PUNCTUATION = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";", '"'])
_CLITICS = frozenset(["'s", "'re", "'ve", "'ll", "'d", "'m"])


@lru_cache(maxsize=1)
def _treebank():
    from nltk.tokenize.treebank import (
        TreebankWordTokenizer,  # imported on first use: nltk takes ~1 s to import
    )

    return TreebankWordTokenizer().tokenize


def _ptb_token(t: str) -> str:
    t = t.lower()  # -LRB- and friends come out upper-case
    # Java splits an opening quote off a word ('beach -> ' beach); nltk leaves it on unless it is a clitic
    return t[1:] if t[:1] == "'" and len(t) > 1 and t not in _CLITICS else t


def tokenize(text: str) -> list[str]:
    """Lower-cased PTB tokens, punctuation dropped ("A dog's t-shirt." -> ["a", "dog", "'s", "t-shirt"])."""
    tokens = (_ptb_token(t) for t in _treebank()(text.lower().replace("\n", " "), convert_parentheses=True))
    return [t for t in tokens if t not in _PUNCTUATION]


def java_available() -> bool:
    return shutil.which("java") is not None


def _tokenize_all(captions: dict, use_java: bool) -> dict:
    if use_java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        with redirect_stdout(io.StringIO()):
            return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {k: [" ".join(tokenize(c)) for c in v] for k, v in captions.items()}


def score_captions(references: dict, results: dict, java: bool | None = None, fast: bool = False) -> dict:
    """references {image: [caption, ...]}, results {image: caption} -> {"BLEU-1": ..., "CIDEr": ...} (x100).

    fast=True computes BLEU and CIDEr only with the Python tokenizer (per-epoch validation).
    """
    assert set(results) <= set(references), "every result needs references"
    assert all(len(references[k]) > 0 for k in results), "an image without references"
    use_java = java_available() if java is None else java
    use_java = use_java and not fast
    gts = _tokenize_all({k: references[k] for k in results}, use_java)
    res = _tokenize_all({k: [v] for k, v in results.items()}, use_java)
    scorers = [(Bleu(4), ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"]), (Cider(), ["CIDEr"])]
    if not fast:
        scorers.insert(1, (Rouge(), ["ROUGE-L"]))
        if use_java:
            from pycocoevalcap.meteor.meteor import Meteor

            scorers.insert(1, (Meteor(), ["METEOR"]))
    out = {}
    for scorer, names in scorers:
        with redirect_stdout(io.StringIO()):  # Bleu prints its internal ratios
            score, _ = scorer.compute_score(gts, res)
        for name, value in zip(names, score if isinstance(score, list) else [score]):
            out[name] = round(float(value) * 100, 2)
    return out


class _CorpusCiderScorer(CiderScorer):
    # pycocoevalcap sets ref_len from the scored batch; SCST needs the training corpus' value instead
    ref_len = property(lambda self: self._corpus_ref_len, lambda self, value: None)


class CorpusCider:
    """pycocoevalcap's CIDEr-D, with document frequencies taken once from a whole training corpus.

    Scoring a small batch of sampled captions then means the same thing as scoring the corpus (the SCST reward).
    """

    def __init__(self, corpus_refs: list[list[str]]):
        base = CiderScorer(n=4, sigma=6.0)
        base.crefs = [cook_refs([" ".join(tokenize(r)) for r in refs]) for refs in corpus_refs]
        base.compute_doc_freq()
        self.document_frequency = base.document_frequency
        self.ref_len = float(np.log(float(len(corpus_refs))))

    def __call__(self, candidates: list[str], refs: list[list[str]]) -> np.ndarray:
        """candidates[i] scored against refs[i] (x1, as in the SCST literature) -> (n,) array."""
        scorer = _CorpusCiderScorer(n=4, sigma=6.0)
        scorer._corpus_ref_len = self.ref_len
        scorer.document_frequency = self.document_frequency
        for cand, rs in zip(candidates, refs):
            scorer.cook_append(" ".join(tokenize(cand)), [" ".join(tokenize(r)) for r in rs])
        return np.array(scorer.compute_cider())
