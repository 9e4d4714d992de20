"""Word vocabulary: built from caption strings, saved as plain JSON.

Captions are tokenised the way the scorer tokenises them (`core.metrics.tokenize`: Penn Treebank conventions,
punctuation dropped), so the words the model learns are the words it is scored on.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable

from .metrics import tokenize

PAD, START, END, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")  # fixed indices: PAD=0, START=1, END=2, UNK=3


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

    def encode(self, text: str, max_words: int | None = None) -> list[int]:
        """Caption text -> [START, w1, ..., wn, END], at most `max_words` words."""
        return [START] + [self.stoi.get(w, UNK) for w in tokenize(text)[:max_words]] + [END]

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
