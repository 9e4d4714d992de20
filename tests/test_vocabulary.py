import json

import pytest

from core.vocabulary import END, PAD, SPECIALS, START, UNK, Vocabulary, tokenize


def test_tokenize_needs_no_downloads_and_drops_punctuation():
    assert tokenize("A dog's ball, on 2 chairs.") == ["a", "dog's", "ball", "on", "2", "chairs"]


def test_special_tokens_have_fixed_indices():
    v = Vocabulary.build(["a cat"], min_count=1)
    assert (PAD, START, END, UNK) == (0, 1, 2, 3)
    assert v.itos[:4] == list(SPECIALS) == ["<pad>", "<start>", "<end>", "<unk>"]


def test_threshold_and_deterministic_order():
    caps = ["a dog runs", "a dog sits", "a cat"]
    v = Vocabulary.build(caps, min_count=2)
    assert v.itos[4:] == ["a", "dog"]  # most frequent first, rare words left out
    assert Vocabulary.build(reversed(caps), min_count=2).itos == v.itos


def test_encode_decode_round_trip_and_unknown_words():
    v = Vocabulary.build(["a dog on the grass"], min_count=1)
    ids = v.encode("A dog on the grass.")
    assert ids[0] == START and ids[-1] == END
    assert v.decode(ids) == "a dog on the grass"
    assert v.encode("a zebra")[2] == UNK
    assert v.decode([START, v.stoi["dog"], END, v.stoi["a"]]) == "dog"  # stops at <end>


def test_json_round_trip(tmp_path):
    v = Vocabulary.build(["two dogs play", "a dog"], min_count=1)
    v.save(tmp_path / "vocab.json")
    w = Vocabulary.load(tmp_path / "vocab.json")
    assert w.itos == v.itos and w.stoi == v.stoi
    assert json.loads((tmp_path / "vocab.json").read_text())["tokens"][:4] == list(SPECIALS)


def test_rejects_vocab_without_special_tokens():
    with pytest.raises(ValueError, match="special tokens"):
        Vocabulary.from_json({"tokens": ["a", "b"]})
