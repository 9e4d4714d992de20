"""`python -m core.evaluate`: a bundle captions a split, its scores land in the bundle."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, make_flickr


@pytest.mark.slow
def test_evaluate_command_writes_metrics_into_the_bundle(tiny_bundle, tmp_path):
    data = make_flickr(tmp_path / "d")
    proc = subprocess.run([sys.executable, "-m", "core.evaluate", "--model", str(tiny_bundle), "--data", str(data),
                           "--split", "val", "--beam", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["images"] == 8 and printed["CIDEr"] > 300  # the overfit model gets these right
    stored = json.loads((tiny_bundle / "metrics.json").read_text())
    assert stored["d/val"]["CIDEr"] == printed["CIDEr"]
    assert printed["diagnostics"]["captions"] == 8 and printed["diagnostics"]["distinct_words"] > 3


def test_caption_diagnostics_count_invented_clothes_repeats_and_words():
    from core.evaluate.run import caption_diagnostics, clothing_mentions, diagnostics_markdown

    assert clothing_mentions("a boy in a blue shirt runs".split()) == [("blue", "shirt")]
    assert clothing_mentions("a man in red is climbing".split()) == [("red", None)]
    assert clothing_mentions("a black dog runs in the white snow".split()) == []
    results = {
        "a": "A boy in a blue shirt is running through the water.",  # no reference names a shirt: invented
        "b": "A man in a red T-shirt climbs.",  # "t-shirt" is supported by a reference's "shirt" of that colour
        "c": "A man in a blue jacket climbs.",  # a jacket, but the reference's jacket is red: the colour is invented
        "d": "a dog runs on the grass and a dog runs",  # "a dog" and "dog runs" twice
        "e": "a dog runs on the grass and a dog runs",
    }
    refs = {"a": ["A shirtless boy splashes in the water ."], "b": ["a man wearing a red shirt climbs a rock"],
            "c": ["a climber in a red jacket"], "d": ["a brown dog runs"], "e": ["two dogs play"]}
    d = caption_diagnostics(results, refs, top=2)
    assert d["captions"] == 5
    assert d["shirt"] == 40.0 and d["unsupported_shirt"] == 20.0
    assert d["unsupported_clothing"] == 40.0  # a and c
    assert d["repeated_bigram"] == 40.0  # d and e
    assert d["most_repeated"][0] == ["a dog runs on the grass and a dog runs", 2]
    words = {"a", "boy", "in", "blue", "shirt", "is", "running", "through", "the", "water", "man", "red", "t-shirt",
             "climbs", "jacket", "dog", "runs", "on", "grass", "and"}
    assert d["distinct_words"] == len(words)
    assert "| 2 | a dog runs on the grass and a dog runs |" in diagnostics_markdown(d)
