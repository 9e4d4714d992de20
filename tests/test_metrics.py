"""core/evaluate/metrics.py: the scorers against references, without the rest of the project."""
import subprocess
import sys

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from conftest import ROOT
from core.evaluate.metrics import CorpusCider, java_available, score_captions

REFS = {"1": ["a dog runs on the grass", "a brown dog is running outside"],
        "2": ["two children play in the sand", "kids playing on a beach"],
        "3": ["a man rides a red bike", "a cyclist on a street"]}


def test_a_caption_scored_against_itself_is_perfect():
    refs = {k: [v[0]] for k, v in REFS.items()}
    scores = score_captions(refs, {k: v[0] for k, v in refs.items()}, java=False)
    assert scores["BLEU-4"] == pytest.approx(100.0, abs=0.01)
    assert scores["ROUGE-L"] == pytest.approx(100.0, abs=0.01)
    assert "METEOR" not in scores  # needs Java, which java=False leaves out


def test_worse_captions_score_lower():
    good = score_captions(REFS, {"1": "a dog runs on grass", "2": "children play in the sand", "3": "a man rides a bike"},
                          java=False)
    bad = score_captions(REFS, {"1": "a cat", "2": "a cat", "3": "a cat"}, java=False)
    assert good["CIDEr"] > bad["CIDEr"] and good["BLEU-4"] > bad["BLEU-4"]


@pytest.mark.skipif(not java_available(), reason="METEOR and the PTB tokenizer need Java")
@pytest.mark.slow
def test_with_java_meteor_is_included():
    scores = score_captions(REFS, {"1": "a dog runs on grass", "2": "kids on a beach", "3": "a man on a bike"})
    assert 0 < scores["METEOR"] < 100


def test_corpus_cider_matches_pycocoevalcap_when_the_corpus_is_the_batch():
    cands = ["a dog runs on grass", "kids on a beach", "a man on a bike"]
    expected = Cider().compute_score(REFS, {k: [c] for k, c in zip(REFS, cands)})[1]
    ours = CorpusCider(list(REFS.values()))(cands, list(REFS.values()))
    assert np.allclose(ours, expected)


def test_one_tokenizer_for_training_and_scoring():
    import core.evaluate.metrics
    import core.data.vocabulary

    assert core.data.vocabulary.tokenize is core.evaluate.metrics.tokenize


def test_metrics_import_nothing_else_from_the_project():
    code = ("import sys; import core.evaluate.metrics; "
            "print(sorted(m for m in sys.modules if m.startswith('core.') and m not in ('core.evaluate', 'core.evaluate.metrics')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
