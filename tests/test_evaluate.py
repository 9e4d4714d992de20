"""`python -m core.evaluate`: a bundle captions a split, its scores land in the bundle."""
import json
from pathlib import Path
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


def test_a_caption_file_beside_a_few_of_its_photos_scores_those_with_wider_document_frequencies(tiny_bundle, tmp_path):
    """The out-of-domain check's layout: COCO's caption file of many photos, with only a few photos beside it
    (captions_val2017.json + images/). Only the photos present are captioned; CIDEr can take its document
    frequencies from a larger set too (--cider-df)."""
    import shutil

    from conftest import make_coco
    from core.evaluate.run import _data_split, evaluate_bundle

    coco = make_coco(tmp_path / "coco")  # 4 photos in COCO's own layout
    few = tmp_path / "few"
    (few / "images").mkdir(parents=True)
    captions = json.loads((coco / "annotations" / "captions_val2017.json").read_text())
    for ann in captions["annotations"]:  # references the model's "a red square" only partly matches
        ann["caption"] += " on a table" if ann["id"] % 2 else " in the sun"
    (few / "captions_val2017.json").write_text(json.dumps(captions))
    for name in ("000000000000.jpg", "000000000002.jpg"):  # 2 of the file's 4 photos are here
        shutil.copy(coco / "images" / "val2017" / name, few / "images" / name)
    flickr = make_flickr(tmp_path / "flickr")
    m = evaluate_bundle(tiny_bundle, few, "val", write=False, df_from=(flickr, "val"))
    assert m["images"] == 2 and m["photos_not_here"] == 2
    wider = m["CIDEr (df flickr/val + these)"]
    assert wider >= 0 and wider != m["CIDEr"]  # other document frequencies, another figure
    assert _data_split("../data/flickr8k:train") == (Path("../data/flickr8k"), "train")
    assert _data_split("../data/flickr8k") == (Path("../data/flickr8k"), "val")
    assert _data_split("C:\\data\\flickr8k") == (Path("C:\\data\\flickr8k"), "val")
