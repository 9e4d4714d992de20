"""No person named where the classifier is sure of an animal or object and sees no sign of people (issue 23):
the rule (core.caption.tags.person_banned), the banned words of beam search, and the captioner applying both."""
import pytest
import torch

from conftest import make_image
from core.base.config import DecodeOptions, ModelConfig
from core.caption.tags import PERSON_CUES, PERSON_WORDS, person_banned
from core.data.object_words import object_words
from core.data.vocabulary import Vocabulary
from core.nn.captioner import Captioner
from core.nn.decode import beam_search
from core.nn.model import CaptionModel

NOUNS = object_words().nouns
STOI = {"<pad>": 0, "a": 4, "man": 5, "cat": 6, "people": 7, "sofa": 8, "shirt": 9}


def probs(**nouns) -> list[float]:
    out = [0.0] * len(NOUNS)
    for noun, p in nouns.items():
        out[NOUNS.index(noun.replace("_", " "))] = p
    return out


def test_a_sure_animal_or_object_without_a_person_cue_bans_the_person_words():
    assert person_banned(probs(cat=0.95, couch=0.03), STOI) == [5, 7, 9]  # "a cat wearing a white shirt" neither
    assert person_banned(probs(apple=0.97), STOI) == [5, 7, 9]  # an object as well as an animal
    assert person_banned(probs(cat=0.85), STOI) == []  # not sure enough (NO_PERSON_MIN_PROB)
    assert person_banned(probs(cat=0.92, jersey=0.06), STOI) == []  # a shirt in view: someone may wear it
    assert person_banned(probs(cat=0.9, hat=0.03, sunglasses=0.03), STOI) == []  # the cues add up
    assert person_banned(probs(ski=0.97), STOI) == []  # the top noun itself comes with people
    assert person_banned(probs(baseball_player=0.99), STOI) == []
    assert person_banned(probs(ball=0.97), STOI) == []  # a ball is mostly seen with people playing with it
    assert person_banned(probs(swing=0.99), STOI) == []
    assert {"man", "woman", "people", "boy", "girl", "child", "person"} <= PERSON_WORDS
    assert PERSON_CUES <= set(NOUNS)  # every cue is a noun the classifier can give


def test_beam_search_never_uses_a_banned_word_and_bans_per_image():
    vocab = Vocabulary.build(["a cat on a sofa", "a man on a sofa", "a dog"], min_count=1)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(vocab), decoder="transformer", hidden_dim=24, num_heads=4, num_layers=1,
                      dropout=0.0, max_len=6)
    model = CaptionModel(cfg, with_encoder=False, pretrained=False).eval()
    feats = torch.randn(2, 16, 1280)
    free = beam_search(model.decoder, feats, beam_size=3, max_len=6)
    first = free[0][0].tokens[0]  # the word the unbanned best caption starts with
    banned = beam_search(model.decoder, feats, beam_size=3, max_len=6, banned=[[first], []])
    assert all(first not in h.tokens for h in banned[0])  # never, in any of the beams
    assert [h.tokens for h in banned[1]] == [h.tokens for h in free[1]]  # the other image is searched as before
    # with constraints of different sizes (searched in groups) each image keeps its own banned words
    mixed = beam_search(model.decoder, feats, beam_size=3, max_len=6, banned=[[first], []],
                        constraints=[[[vocab.stoi["sofa"]]], []])
    assert all(first not in h.tokens for h in mixed[0]) and vocab.stoi["sofa"] in mixed[0][0].tokens


def _sure_of(cap: Captioner, monkeypatch, classes: dict) -> None:
    """The tiny model's backbone has no ImageNet head: give it one that sees these classes (index -> logit)."""
    cap.can_tag = True
    logits = torch.full((1000,), -20.0)
    for i, v in classes.items():
        logits[i] = v
    monkeypatch.setattr(type(cap.model.encoder), "classify", lambda self, feats: logits.expand(feats.size(0), -1),
                        raising=False)


def test_the_captioner_leaves_people_out_where_the_classifier_sees_only_a_cat(tiny_bundle, tmp_path, monkeypatch):
    # the tiny model knows no person words: its colour words stand in for them
    monkeypatch.setattr("core.caption.tags.PERSON_WORDS", frozenset({"red"}))
    make_image(tmp_path / "a.png", "red", "square")
    cap = Captioner(tiny_bundle, device="cpu")
    _sure_of(cap, monkeypatch, {281: 8.0})  # tabby cat, about 0.99
    assert "red" not in cap.caption([("a", tmp_path / "a.png")], DecodeOptions())[0].words
    assert "red" in cap.caption([("a", tmp_path / "a.png")], DecodeOptions(object_words=False))[0].words  # off
    _sure_of(cap, monkeypatch, {281: 8.0, 610: 5.5})  # and a jersey (a T-shirt) at about 0.08: people may be there
    assert cap.caption([("a", tmp_path / "a.png")], DecodeOptions())[0].words == ["a", "red", "square"]


def test_which_nouns_are_seen_without_people_is_measured_from_caption_text(tmp_path):
    import sys

    from conftest import ROOT
    from core.caption.tags import people_free_nouns

    sys.path.insert(0, str(ROOT / "tools"))
    from measure_person_share import count

    counted = count(["A man throws a ball .", "a ball on the grass", "a cat on a bed", "two cats and a woman",
                     "a kitten sleeps"])
    assert counted["ball"] == [2, 1] and counted["cat"] == [3, 1]  # "cats", "kitten": the noun's word forms
    free = people_free_nouns()  # the committed table (Flickr8k train + COCO val2017 caption text)
    assert {"zebra", "cat", "bear", "apple", "clock"} <= free
    assert not {"ball", "swing", "bike", "horse", "cliff"} & free
