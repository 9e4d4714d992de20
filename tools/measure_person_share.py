"""Measure, for each plain noun, how often the captions that name it also name a person -> core/data/person_share.json.

The person rule (core.caption.tags.person_banned) keeps people out of a caption only where the classifier is sure of
an object that is usually seen without them: a zebra (7% of the captions naming one also name a person), a cat (10%),
a clock (6%), not a ball (58%), a swing (94%) or a bike (83%). Tried first with every sure object: on the Flickr8k dev
split the rule then fired on 116 of 1,000 photos and 42 of those showed people (balls, swings, cliffs, boats).

    python tools/measure_person_share.py --data ../shared/data/flickr8k --text ../shared/data/coco_val2017_mini/captions_val2017.json \
        --exclude ../shared/data/coco_val2017_mini/images

Caption text only (no photo is opened): Flickr8k's training captions and, with --text, a caption file (the 11 photos
that check a model are left out with --exclude).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.base.files import atomic_write_json  # noqa: E402
from core.caption.tags import PERSON_SHARE, PERSON_WORDS  # noqa: E402
from core.data.datasets import load_split  # noqa: E402
from core.data.object_words import object_words  # noqa: E402
from core.data.text_only import caption_nouns, captions_text, excluded_names  # noqa: E402
from core.data.vocabulary import fast_tokenize  # noqa: E402


def count(captions: list[str]) -> dict[str, list[int]]:
    """noun -> [captions naming it, of which name a person]."""
    nouns = object_words().nouns
    out: dict[str, list[int]] = {}
    for text in captions:
        tokens = fast_tokenize(text)
        person = not PERSON_WORDS.isdisjoint(tokens)
        for n in caption_nouns(tokens):
            c = out.setdefault(nouns[n], [0, 0])
            c[0] += 1
            c[1] += person
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a captions dataset (its training split is read)")
    p.add_argument("--split", default="train")
    p.add_argument("--text", default=None, help="a caption file without photos (COCO JSON or one caption a line)")
    p.add_argument("--exclude", default="", help="photos whose captions are left out of --text (folder or names)")
    p.add_argument("--out", type=Path, default=PERSON_SHARE)
    args = p.parse_args(argv)
    captions = [c for it in load_split(Path(args.data), args.split)[0] for c in it.captions]
    sources = [f"{Path(args.data).name}/{args.split}: {len(captions)} captions"]
    if args.text:
        text = captions_text(args.text, excluded_names(args.exclude) if args.exclude else set())
        captions += text
        sources.append(f"{Path(args.text).name}: {len(text)} captions")
    counts = count(captions)
    atomic_write_json(args.out, {"about": "plain noun -> [captions naming it, of which name a person]; made by "
                                          "tools/measure_person_share.py from " + "; ".join(sources),
                                 "nouns": dict(sorted(counts.items()))})
    print(f"{len(counts)} nouns from {len(captions)} captions -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
