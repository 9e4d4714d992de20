"""Object words: the ImageNet -> noun mapping, tags from classifier logits, the constraints they give."""
import json
from pathlib import Path

import pytest
import torch

from core.caption.tags import format_tags, guide_words, image_tags
from core.data.object_words import OBJECT_WORDS, object_words

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_mapping_is_what_the_script_builds():
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from build_object_words import build

    assert json.loads(OBJECT_WORDS.read_text(encoding="utf-8")) == build()


def test_mapping_groups_fine_classes_into_plain_nouns():
    classes = json.loads(OBJECT_WORDS.read_text(encoding="utf-8"))["classes"]
    noun = {c["index"]: c["noun"] for c in classes}
    assert len(noun) == 1000 and sorted(noun) == list(range(1000))
    assert {noun[i] for i in range(151, 269)} == {"dog"}  # the 118 breeds
    assert {noun[i] for i in range(281, 286)} == {"cat"}  # tabby, tiger, Persian, Siamese, Egyptian
    assert noun[291] == "lion" and noun[292] == "tiger"  # big cats keep their names
    assert noun[967] == "coffee" and noun[409] == noun[892] == "clock" and noun[805] == noun[852] == "ball"
    assert noun[339] == "horse" and noun[404] == "airplane" and noun[671] == "bike"
    ow = object_words()
    assert {"dog", "cat", "ball", "horse"} <= ow.guide
    # no clothing, people or double meanings forced into captions
    assert not {"jersey", "orange", "crane", "hot dog", "groom", "swimsuit"} & ow.guide
    assert {"cat", "cats", "kitten"} <= set(ow.words["cat"]) and "dogs" in ow.words["dog"]


def _logits(prob_by_class: dict) -> torch.Tensor:
    p = torch.full((1000,), 1e-9)
    for i, q in prob_by_class.items():
        p[i] = q
    return (p / p.sum()).log().unsqueeze(0)  # (1, 1000)


def test_tags_sum_fine_classes_into_nouns():
    tags = image_tags(torch.cat([_logits({281: 0.4, 282: 0.28, 285: 0.2, 967: 0.12}), _logits({207: 0.5, 852: 0.5})]))
    assert tags[0][0] == ("cat", pytest.approx(0.88, abs=1e-3)) and tags[0][1][0] == "coffee"
    assert {n for n, _ in tags[1]} == {"dog", "ball"}
    assert format_tags([("cat", 0.97), ("coffee", 0.1)]) == "cat 0.97; coffee 0.10"


def test_guide_words_only_for_confident_known_guidable_nouns():
    stoi = {"<pad>": 0, "a": 4, "cat": 5, "cats": 6, "dog": 7, "orange": 8}
    assert guide_words([("cat", 0.9)], stoi) == [[5, 6]]
    assert guide_words([("cat", 0.6)], stoi) == []  # not confident enough (GUIDE_MIN_PROB)
    assert guide_words([("horse", 0.9)], stoi) == []  # the model cannot say it
    assert guide_words([("orange", 0.9)], stoi) == []  # the colour, most of the time
    assert guide_words([("cat", 0.8), ("dog", 0.75)], stoi, max_nouns=2) == [[5, 6], [7]]


def test_the_bundled_cat_photo_is_tagged_cat():
    from core.data.images import load_image
    from core.nn.batches import preprocess
    from core.nn.model import Encoder

    enc = Encoder("efficientnet_lite2").eval()
    from core.nn.backbones import get_spec

    s = get_spec("efficientnet_lite2")
    x = preprocess(load_image(ROOT / "assets" / "samples" / "cat.jpg"), s.image_size, s.mean, s.std).unsqueeze(0)
    with torch.no_grad():
        feats = enc(x)  # (1, P, C)
        logits = enc.classify(feats)
        assert torch.allclose(logits, enc.cnn.classify(x), atol=1e-4)  # the head on the grid = the whole network
    noun, prob = image_tags(logits)[0][0]
    assert noun == "cat" and prob > 0.8
