import json

import pytest

from core.vocabulary import END, PAD, SPECIALS, START, UNK, Vocabulary, tokenize


def test_tokenize_needs_no_downloads_and_drops_punctuation():
    """PTB conventions (nltk's Treebank tokenizer, no data download): 's and n't split, hyphens kept."""
    assert tokenize("A dog's ball, on 2 chairs.") == ["a", "dog", "'s", "ball", "on", "2", "chairs"]
    assert tokenize('Two men (one in a T-shirt) don\'t "jump"!') == [
        "two", "men", "-lrb-", "one", "in", "a", "t-shirt", "-rrb-", "do", "n't", "jump"]  # brackets as Java keeps them


TRICKY = ["A dog's ball, on 2 chairs.", 'Two men (one in a T-shirt) don\'t "jump"!', "a 3.5-year-old boy ; smiles",
          "The girl's dress is pink and white...", "A man: climbing -- a rock wall?", "People at the 'beach'",
          "a black and white dog is running through the grass .", "Kids' toys & a U.S. flag"]


@pytest.mark.skipif(__import__("shutil").which("java") is None, reason="the official PTB tokenizer needs Java")
def test_tokenize_matches_the_official_java_ptb_tokenizer():
    import contextlib
    import io

    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with contextlib.redirect_stdout(io.StringIO()):
        java = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(TRICKY)})
    assert [" ".join(tokenize(c)) for c in TRICKY] == [java[i][0] for i in range(len(TRICKY))]


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
