"""ImageNet's 1000 classes -> the plain nouns a caption uses ("tabby", "Siamese cat" -> cat), and the words a
caption may use for each noun ("cat" -> cat, cats, kitten). Made by tools/build_object_words.py into
object_words.json; read by the tags (core.caption.tags), the tag-reading decoder (core.nn.model) and the
text-only caption data (core.data.text_only). Standard library only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

OBJECT_WORDS = Path(__file__).resolve().parent / "object_words.json"


@dataclass(frozen=True)
class ObjectWords:
    nouns: tuple[str, ...]  # the distinct plain nouns
    class_noun: tuple[int, ...]  # ImageNet class index -> index into nouns
    guide: frozenset[str]  # nouns that may be forced into a caption
    words: dict  # noun -> the words a caption may use for it ("cat" -> cat, cats, kitten, ...)


@lru_cache(maxsize=1)
def object_words(path: Path = OBJECT_WORDS) -> ObjectWords:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    classes = sorted(data["classes"], key=lambda c: c["index"])
    nouns = tuple(sorted({c["noun"] for c in classes}))
    pos = {n: i for i, n in enumerate(nouns)}
    # a noun guides only if every class behind it may ("crane" the bird and the machine share nothing)
    blocked = {c["noun"] for c in classes if not c["guide"]}
    return ObjectWords(nouns, tuple(pos[c["noun"]] for c in classes),
                       frozenset(n for n in nouns if n not in blocked and n in data["words"]), data["words"])
