"""Word vocabulary: built from caption strings, saved as plain JSON.

Tokenising follows the Penn Treebank conventions of the official coco-caption scorer (Stanford's Java
PTBTokenizer, then punctuation dropped), through nltk's TreebankWordTokenizer, which needs no data download
(nltk's punkt could not be fetched offline): scores computed without Java then match the official ones.
"""
from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterable

PAD, START, END, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")  # fixed indices: PAD=0, START=1, END=2, UNK=3

# what pycocoevalcap's PTBTokenizer removes after tokenising (it keeps brackets, as -lrb- -rrb-)
_PUNCTUATION = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";", '"'])
_CLITICS = frozenset(["'s", "'re", "'ve", "'ll", "'d", "'m"])


@lru_cache(maxsize=1)
def _treebank():
    from nltk.tokenize.treebank import TreebankWordTokenizer  # imported on first use: nltk takes ~1 s to import

    return TreebankWordTokenizer().tokenize


def _ptb_token(t: str) -> str:
    t = t.lower()  # -LRB- and friends come out upper-case
    # Java splits an opening quote off a word ('beach -> ' beach); nltk leaves it on unless it is a clitic
    return t[1:] if t[:1] == "'" and len(t) > 1 and t not in _CLITICS else t


def tokenize(text: str) -> list[str]:
    """Lower-cased PTB tokens, punctuation dropped ("A dog's t-shirt." -> ["a", "dog", "'s", "t-shirt"])."""
    tokens = (_ptb_token(t) for t in _treebank()(text.lower().replace("\n", " "), convert_parentheses=True))
    return [t for t in tokens if t not in _PUNCTUATION]


class Vocabulary:
    def __init__(self, words: Iterable[str]):
        self.itos: list[str] = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 5) -> "Vocabulary":
        counts = Counter(w for c in captions for w in tokenize(c))
        # sorted by frequency, then alphabetically, so the same captions always give the same indices
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Caption text -> [START, w1, ..., wn, END]."""
        return [START] + [self.stoi.get(w, UNK) for w in tokenize(text)] + [END]

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
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        return cls.from_json(json.loads(Path(path).read_text()))
