"""Caption text without photos: a second source of sentences for the decoder (issue "Captions a person accepts").

Flickr8k's 30,000 captions are of people and dogs outdoors; a caption file such as COCO's (captions_train2017.json,
captions_val2017.json) holds sentences about bears, pizzas and buses even where its photos are not at hand. The
decoder learns them as captions of "no photo": the grid is a learned vector, and the tags are what the backbone's
classifier would have said of the photo, made from the caption's own nouns (core.caption.tags' plain-noun mapping)
with the classifier's kind of noise, measured on Flickr8k photos (tools/measure_tag_noise.py -> tag_noise.json):
the caption's subject and its other nouns are missed as often as the classifier misses them, found with the
probabilities it gives them, and wrong nouns fill the other top tags with theirs. Standard library and numpy only.

    captions_text(path, exclude={"000000000285.jpg", ...})  -> list of caption strings
    TagNoise.load().noun_probs(nouns, rng)                   -> (N,) probabilities, as the classifier's tag row
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.data.object_words import object_words

TAG_NOISE = Path(__file__).resolve().parent / "tag_noise.json"


class TextDataError(ValueError):
    """A caption file that cannot be used, in plain words."""


def captions_text(path: Path | str, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The captions of a caption file whose photos need not exist: a COCO-format JSON (its `annotations`), or a
    text file with one caption per line. `exclude` names images (file names, or COCO ids as strings) whose
    captions are left out: the photos a model is checked on must not be described to it in training."""
    path = Path(path)
    if not path.is_file():
        raise TextDataError(f"{path} is not a file: give a COCO caption JSON or a text file with one caption a line")
    if path.suffix.lower() != ".json":
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {img["id"]: img.get("file_name", "") for img in data.get("images", [])}
        anns = data["annotations"]
    except (ValueError, KeyError, TypeError) as e:
        raise TextDataError(f"{path} is not a COCO caption file (no readable 'annotations' list): {e}") from None
    out = []
    for a in anns:
        image = a.get("image_id")
        if str(image) in exclude or names.get(image, "") in exclude or _coco_name(image) in exclude:
            continue
        if isinstance(a.get("caption"), str) and a["caption"].strip():
            out.append(a["caption"].strip())
    return out


def excluded_names(spec: str) -> set[str]:
    """TrainConfig.text_exclude -> the image file names to leave out: the photos of a folder, or a comma list."""
    if not spec:
        return set()
    folder = Path(spec)
    if "," not in spec and folder.is_dir():
        return {p.name for p in folder.iterdir() if p.is_file()}
    return {name.strip() for name in spec.split(",") if name.strip()}


def _coco_name(image_id) -> str:
    """COCO 2017's file name of an image id: 285 -> "000000000285.jpg"."""
    return f"{image_id:012d}.jpg" if isinstance(image_id, int) else ""


@lru_cache(maxsize=1)
def _word_nouns() -> dict[str, tuple[int, ...]]:
    """caption word -> the plain nouns (their index in object_words().nouns) it names: "kitten" -> (cat,)."""
    ow = object_words()
    pos = {n: i for i, n in enumerate(ow.nouns)}
    out = defaultdict(set)
    for noun, words in ow.words.items():
        for w in words:
            out[w].add(pos[noun])
    return {w: tuple(sorted(n)) for w, n in out.items()}


def caption_nouns(tokens: list[str]) -> list[int]:
    """The plain nouns a tokenised caption names (indices into object_words().nouns), in order of first mention."""
    seen: dict[int, None] = {}
    for w in tokens:
        for n in _word_nouns().get(w, ()):
            seen.setdefault(n, None)
    return list(seen)


@dataclass(frozen=True)
class TagNoise:
    """How the classifier's top tags relate to a photo's caption nouns (measured on Flickr8k photos)."""
    subject_rate: float  # how often the photo's subject (the noun its captions name first) is a top tag
    subject_probs: tuple[float, ...]  # quantiles of its probability then
    other_rate: float  # ... another noun of the captions
    other_probs: tuple[float, ...]
    false_probs: tuple[float, ...]  # quantiles of the probability of a top tag that no caption names
    slots: int  # top tags measured (the decoder's tag slots)
    false_nouns: tuple[tuple[int, float], ...]  # (noun index, share) of the wrong top tags, commonest first

    @classmethod
    @lru_cache(maxsize=1)
    def load(cls, path: Path = TAG_NOISE) -> "TagNoise":
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        pos = {n: i for i, n in enumerate(object_words().nouns)}
        kept = {n: c for n, c in d["false_nouns"].items() if n in pos}
        total = sum(kept.values())
        false = tuple((pos[n], c / total) for n, c in sorted(kept.items(), key=lambda kv: -kv[1]))
        return cls(d["subject_rate"], tuple(d["subject_probs"]), d["other_rate"], tuple(d["other_probs"]),
                   tuple(d["false_probs"]), d["slots"], false)

    def noun_probs(self, nouns: list[int], rng: np.random.Generator) -> np.ndarray:
        """A caption's nouns (its subject first) -> (N,) noun probabilities as the classifier might have given its
        photo: each noun found with the measured chance and probability, the other top tags wrong nouns."""
        out = np.zeros(len(object_words().nouns), dtype=np.float32)
        found = 0
        for i, n in enumerate(nouns):
            rate, probs = (self.subject_rate, self.subject_probs) if i == 0 else (self.other_rate, self.other_probs)
            if found < self.slots and rng.random() < rate:
                out[n] = _draw(probs, rng)
                found += 1
        if out.sum() > 1:  # two nouns both found at 0.9: one softmax cannot say that
            out *= 0.98 / out.sum()
        shares = np.array([s for _, s in self.false_nouns])
        for i in rng.choice(len(self.false_nouns), size=self.slots - found + 2, p=shares):
            n = self.false_nouns[i][0]
            if out[n] == 0 and n not in nouns and np.count_nonzero(out) < self.slots:
                out[n] = min(_draw(self.false_probs, rng), 1 - out.sum())  # what the found nouns leave
        return out


def _draw(quantiles: tuple[float, ...], rng: np.random.Generator) -> float:
    """A value from a distribution given by its evenly spaced quantiles (linear between them)."""
    return float(np.interp(rng.random(), np.linspace(0, 1, len(quantiles)), quantiles))
