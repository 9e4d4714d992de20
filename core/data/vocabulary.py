"""Word vocabulary: built from caption strings, saved as plain JSON.

Captions are tokenised the way the scorer tokenises them (`core.evaluate.metrics.tokenize`: Penn Treebank conventions,
punctuation dropped), so the words the model learns are the words it is scored on. A training set is tokenised
once (`TokenizedCaptions`): the same tokens count words for the vocabulary and become the training samples, and
they are held as one integer array, not as Python lists, so COCO's 591,000 captions stay small.
"""
from __future__ import annotations

import json
import re
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from core.evaluate.metrics import tokenize

PAD, START, END, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")  # fixed indices: PAD=0, START=1, END=2, UNK=3


# Most captions ("A man riding a horse on a beach.", "A red, white, and blue plane.") hold only ASCII letters,
# digits, spaces, hyphens and commas, at most one final period, and none of the words or marks nltk's Treebank rules
# treat specially (CONTRACTIONS2: cannot, gimme...; "--"; a comma before a digit or another comma): for those the
# Treebank tokenizer only splits off commas and the period, which the scorer then drops, so splitting on them gives
# the same tokens ~100x faster (97% of COCO's val2017 captions). Everything else goes through `tokenize`;
# tests/test_vocabulary.py checks that both agree.
_SIMPLE = re.compile(r"[a-z0-9 \t\n,-]*\.?[ \t\n]*")
_TREEBANK_SPLITS = re.compile(r"cannot|gimme|gonna|gotta|lemme|wanna|--|,[\d,]")
_SEPARATORS = str.maketrans(",.", "  ")


def fast_tokenize(text: str) -> list[str]:
    """The same tokens as `core.evaluate.metrics.tokenize`, through a shortcut for the plain captions that are most of them."""
    low = text.lower()
    if _SIMPLE.fullmatch(low) and not _TREEBANK_SPLITS.search(low):
        return [t for t in low.translate(_SEPARATORS).split() if t != "-"]
    return tokenize(text)


@dataclass
class TokenizedCaptions:
    """Captions tokenised once: `flat` holds every caption's word numbers end to end, caption k is
    flat[offsets[k]:offsets[k + 1]], and words[n] is word number n (numbered in order of first appearance)."""

    words: list[str]
    flat: np.ndarray  # (total tokens,) int32
    offsets: np.ndarray  # (n captions + 1,) int64

    @classmethod
    def of(cls, captions: Iterable[str]) -> "TokenizedCaptions":
        number: dict[str, int] = {}
        flat, offsets = array("i"), array("q", [0])  # 4 and 8 bytes an entry, not a Python int each
        for c in captions:
            flat.extend([number.setdefault(w, len(number)) for w in fast_tokenize(c)])
            offsets.append(len(flat))
        return cls(list(number), np.array(flat, dtype=np.int32), np.array(offsets, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> dict[str, int]:
        return dict(zip(self.words, np.bincount(self.flat, minlength=len(self.words)).tolist()))


class Vocabulary:
    def __init__(self, words: Iterable[str]):
        self.itos: list[str] = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, captions: Iterable[str] | TokenizedCaptions, min_count: int = 5) -> "Vocabulary":
        counts = (captions if isinstance(captions, TokenizedCaptions) else TokenizedCaptions.of(captions)).counts()
        # sorted by frequency, then alphabetically, so the same captions always give the same indices
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, max_words: int | None = None) -> list[int]:
        """Caption text -> [START, w1, ..., wn, END], at most `max_words` words."""
        return [START] + [self.stoi.get(w, UNK) for w in fast_tokenize(text)[:max_words]] + [END]

    def encode_all(self, tokenized: TokenizedCaptions, captions: np.ndarray, max_words: int) -> np.ndarray:
        """`encode(text, max_words)` of the chosen captions (indices into `tokenized`) as one PAD-padded
        (n, max_words + 2) int32 array: row k is [START, w1, ..., wn, END, PAD, ...]."""
        ids = np.asarray([self.stoi.get(w, UNK) for w in tokenized.words], dtype=np.int32)
        captions = np.asarray(captions, dtype=np.int64)
        start, lengths = tokenized.offsets[captions], np.diff(tokenized.offsets)[captions]  # (n,) each
        lengths = np.minimum(lengths, max_words)
        out = np.full((len(captions), max_words + 2), PAD, dtype=np.int32)  # (n, L)
        out[:, 0] = START
        pos = np.arange(max_words)  # (max_words,)
        inside = pos[None, :] < lengths[:, None]  # (n, max_words)
        out[:, 1:-1][inside] = ids[tokenized.flat[(start[:, None] + pos[None, :])[inside]]]
        out[np.arange(len(captions)), lengths + 1] = END
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text; stops at END, skips PAD and START."""
        words = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i in (PAD, START):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else SPECIALS[UNK])
        return " ".join(words)

    def to_json(self) -> dict:
        return {"format": "caption-vocab/1", "tokens": self.itos}

    @classmethod
    def from_json(cls, d: dict) -> "Vocabulary":
        tokens = d["tokens"]
        if list(tokens[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError("vocabulary file does not start with the special tokens " + ", ".join(SPECIALS))
        return cls(tokens[len(SPECIALS):])

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
