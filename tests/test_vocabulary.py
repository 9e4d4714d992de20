import json

import pytest

from core.data.vocabulary import END, PAD, SPECIALS, START, UNK, Vocabulary
from core.evaluate.metrics import tokenize


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


# ------------------------------------------------------------------ tokenised once, fast path, numpy samples

def _varied_captions(n=4000, seed=0):
    """Plain captions and every kind the fast path must hand back to nltk: punctuation, quotes, contractions,
    mid-sentence periods, numbers with commas, non-ASCII, tabs and newlines, nltk's split words (cannot, gonna)."""
    import random

    rng = random.Random(seed)
    words = ["a", "A", "dog", "Dog's", "cannot", "gonna", "wanna", "gimme", "lemme", "gotta", "cannotx", "t-shirt",
             "3.5", "1,000", "U.S.", "café", "(big)", '"red"', "'beach'", "don't", "...", "--", "x", "2", "&", "?",
             "!", ";", ":", "I'm", "they'll", "it's", "kids'", "Tab\there", "new\nline", "d'ye", "more'n", "'tis",
             "red,", "red,white", ",", ",,", "a,1", "-", "--", "close-up", "-x", "x-", "\n", "1,"]
    out = list(TRICKY) + ["", ".", " . ", "a dog.", "a dog .", "a dog..", "A dog. A cat", "A DOG RUNS.  ",
                          "wanna go", "I cannot.", "two  spaces\t.", "A red, white, and blue plane.", "a,", ",a", "a ,.",
                          "a, , b", "a,,b", "a - b", "a -- b", "a\n", "x,2", "a-.", "a,-b."]
    near = ["a", "Dog", "red,", ",", "close-up", "-", "x-", "2", "1,", "\n", "gonna", "a,b", ",2", "--", "."]
    for vocabulary in (words, near):  # anything, and captions at the edge of the fast path
        for _ in range(n // 2):
            caption = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 12)))
            out.append(caption + rng.choice(["", ".", " .", "!", "  ", ","]))
    return out


def test_fast_tokenize_gives_exactly_the_scorer_tokens():
    from core.data.vocabulary import fast_tokenize

    captions = _varied_captions()
    assert [fast_tokenize(c) for c in captions] == [tokenize(c) for c in captions]


def test_tokenized_once_gives_the_same_vocabulary_and_encodings_as_caption_by_caption():
    import numpy as np
    from collections import Counter

    from core.data.vocabulary import TokenizedCaptions

    captions = _varied_captions(800, seed=1)
    tokenized = TokenizedCaptions.of(captions)
    assert len(tokenized) == len(captions)
    counts = Counter(w for c in captions for w in tokenize(c))
    assert tokenized.counts() == dict(counts)
    vocab = Vocabulary.build(tokenized, min_count=3)
    expected = sorted((w for w, n in counts.items() if n >= 3), key=lambda w: (-counts[w], w))
    assert vocab.itos == list(SPECIALS) + expected
    assert Vocabulary.build(captions, min_count=3).itos == vocab.itos  # strings or tokens: one vocabulary
    chosen = np.array([5, 0, 17, 3, len(captions) - 1, 1])
    for max_words in (4, 20):
        rows = vocab.encode_all(tokenized, chosen, max_words)
        assert rows.shape == (len(chosen), max_words + 2) and rows.dtype == np.int32
        for row, k in zip(rows.tolist(), chosen):
            ids = vocab.encode(captions[k], max_words)
            assert row == ids + [PAD] * (max_words + 2 - len(ids))


def test_training_samples_batch_like_pad_captions():
    import numpy as np

    from core.train.trainer import Samples, pad_captions
    from core.data.vocabulary import TokenizedCaptions

    captions = ["a dog runs", "a cat", "a big red dog runs on the grass", "dog"]
    tokenized = TokenizedCaptions.of(captions)
    vocab = Vocabulary.build(tokenized, min_count=1)
    samples = Samples(np.array([7, 7, 9, 4], np.int32), vocab.encode_all(tokenized, np.arange(4), 6))
    images, caps = samples.batch([3, 1, 0])
    assert images == [4, 7, 7]
    assert caps.tolist() == pad_captions([vocab.encode(captions[k], 6) for k in (3, 1, 0)]).tolist()
