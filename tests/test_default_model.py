"""The model that ships in models/default: it must load offline and caption real photographs sensibly."""
import json

import pytest

from conftest import ROOT
from core.base.config import DecodeOptions
from core.bundle.store import DEFAULT_MODEL
from core.nn.weights import load_bundle
from core.nn.captioner import Captioner

SAMPLES = ROOT / "assets" / "samples"


def test_shipped_bundle_is_small_safe_and_documented():
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL.iterdir()}
    assert {"model.safetensors", "config.json", "vocab.json", "metrics.json", "card.md"} <= set(files)
    assert sum(files.values()) < 50 * 2**20
    card = (DEFAULT_MODEL / "card.md").read_text()
    assert "python -m core.train" in card and "Hodosh" in card
    metrics = json.loads((DEFAULT_MODEL / "metrics.json").read_text())
    dev = metrics["flickr8k/val"]
    assert dev["images"] == 1000 and dev["BLEU-4"] > 0 and dev["CIDEr"] > 0


def test_shipped_model_describes_real_photos_sensibly():
    """Flickr8k is mostly people and dogs (15 of its 6000 training photos show a cat), so the check uses the photo
    of a person: a fluent sentence about a person, and different photos get different captions."""
    b = load_bundle(DEFAULT_MODEL)
    assert len(b.vocab) == b.config.vocab_size
    photos = [(p.stem, p) for p in sorted(SAMPLES.glob("*.jpg"))]
    results = {r.image: r for r in Captioner(DEFAULT_MODEL).caption(photos, DecodeOptions(beam=3))}
    words = results["astronaut"].caption.split()
    assert any(w in words for w in ("woman", "man", "person", "girl", "lady", "boy")), words
    for r in results.values():
        w = r.caption.split()
        assert r.error is None and len(w) >= 4 and w[0] in ("a", "an", "two", "three", "the", "some"), r.caption
        assert "<unk>" not in w and len({tuple(w[i:i + 3]) for i in range(len(w) - 2)}) == len(w) - 2
    assert len({r.caption for r in results.values()}) == len(results)


def test_the_sample_cat_is_the_subject_of_its_caption():
    """The part-1 model wrote "a man in a blue shirt is sitting on a cat": Flickr8k shows 15 cats in 6,000 photos.
    This one reads the classifier's tags (cat 0.96) and learned sentences about cats from caption text: the cat is
    the caption's subject and no person is named. (Without object words it still writes "a man in a blue shirt is
    riding a bike": the photo's grid outweighs the tag there, a weakness the card states.)"""
    from core.caption.tags import PERSON_WORDS, WORN_WORDS

    cap = Captioner(DEFAULT_MODEL)
    assert cap.can_tag and cap.reads_tags and cap.calibration is not None and cap.calibration.c < 0
    photo = [("cat", SAMPLES / "cat.jpg")]
    guided = cap.caption(photo)[0]
    assert guided.tags[0][0] == "cat" and guided.tags[0][1] > 0.9
    words = guided.caption.split()
    subject = next(w for w in words if w not in ("a", "an", "the", "two", "small", "white", "black", "brown",
                                                 "orange", "gray", "grey", "tabby", "and", "little", "large"))
    assert subject in ("cat", "cats", "kitten"), guided.caption
    assert not (set(guided.caption.split()) & (PERSON_WORDS | WORN_WORDS)), guided.caption
    assert 0 <= guided.confidence <= 1 and guided.check == (guided.confidence < cap.calibration.flag_below)
