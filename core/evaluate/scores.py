"""Caption scores in words a user reads: one formatting for every page, a one-line explanation of each metric,
a plain summary of a model, the comparison of a new model with the active one, and what a dataset's size
lets a user expect from training.

Standard library only (and core.bundle.store's JSON readers): the pages draw these without torch or pycocoevalcap.
The figures come from the bundle (metrics.json, card.md), never from one hard-coded model.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from core.bundle.store import headline_metrics

# What each figure means, in one line (scores are x100, as core.evaluate.metrics reports them).
METRIC_HELP = {
    "BLEU-1": "BLEU-1: how many of the caption's words appear in captions people wrote for the photo (0-100).",
    "BLEU-4": "BLEU-4: how many of the caption's runs of four words appear in captions people wrote (0-100; "
              "above 20 is usual for this kind of model).",
    "METEOR": "METEOR: word overlap with people's captions that also counts synonyms and word forms (0-100).",
    "ROUGE-L": "ROUGE-L: the longest run of words shared, in order, with a caption people wrote (0-100).",
    "CIDEr": "CIDEr: how well the caption matches what several people wrote, counting most the words that are "
             "particular to this photo (people's own captions score about 85 on COCO).",
    "distinct_captions": "Different captions: how many different sentences the model wrote for the validation "
                         "photos; a low count means it repeats the same few sentences.",
}
LABELS = {"distinct_captions": "different captions", "train_loss": "training loss", "epoch": "epoch"}
SCORE_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")

# CIDEr bands -> words. Anchors: people's captions score about 85 against each other's on COCO (the COCO
# leaderboard's "Human" entry, CIDEr-D c5 0.854); the default model scores 49.8 on Flickr8k (models/default).
QUALITY = ((85, "very good", "Its captions are about as close to people's own as people's are to each other."),
           (60, "good", "Its captions usually describe the photo correctly, with some wrong details."),
           (40, "fair", "Its captions usually name the main subject and scene, but often get details wrong "
                        "(colours, counts, what people are doing): check them before you use them."),
           (20, "weak", "Its captions get the gist of some photos and are wrong for many: check every one."),
           (0, "poor", "Its captions are mostly wrong or repeat the same few sentences: it is not ready for use."))


def metric_label(name: str) -> str:
    return LABELS.get(name, name)


def format_metric(name: str, value) -> str:
    """The one way a figure is written: scores with one decimal ("20.9", "0.0"), counts as whole numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "—"
    if name in SCORE_NAMES:
        return f"{value:.1f}"
    if name in ("distinct_captions", "epoch", "images"):
        return f"{int(value):,}"
    if name in ("loss", "train_loss"):
        return f"{value:.3f}"
    return f"{value:.3g}"


def quality(cider: float | None) -> tuple[str, str]:
    """("fair", "Its captions usually name ...") for a CIDEr score; ("unknown", ...) without one."""
    if not isinstance(cider, (int, float)):
        return "unknown", "This model has no scores yet, so how good its captions are is not known."
    return next((word, text) for floor, word, text in QUALITY if cider >= floor)


def card_sections(card: str) -> dict[str, str]:
    """{heading (lower case): its text} of a Markdown card's sections (any heading level)."""
    out, heading, lines = {}, "", []
    for line in card.splitlines():
        found = re.match(r"#{1,6}\s+(.*)", line)
        if found:
            out[heading], heading, lines = "\n".join(lines).strip(), found.group(1).strip().lower(), []
        else:
            lines.append(line)
    out[heading] = "\n".join(lines).strip()
    return out


def _section(sections: dict[str, str], words: tuple[str, ...]) -> str:
    """The first paragraph of the first section whose heading holds one of `words` (tables left out)."""
    for heading, text in sections.items():
        if any(w in heading for w in words):
            for paragraph in re.split(r"\n\s*\n", text):
                if paragraph.strip() and not paragraph.lstrip().startswith(("|", "```")):
                    return " ".join(paragraph.split())
    return ""


def demote_headings(card: str, below: int = 2) -> str:
    """The card with every heading `below` levels smaller (# -> ###), so none is bigger than the page's title;
    lines inside code blocks are left alone."""
    out, fenced = [], False
    for line in card.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6}\s", line):
            hashes = len(line) - len(line.lstrip("#"))
            line = "#" * min(6, hashes + below) + line[hashes:]
        out.append(line)
    return "\n".join(out)


@dataclass
class Summary:
    quality: str  # "fair", "unknown", ...
    how_good: str  # one sentence in plain words
    good_at: str
    bad_at: str
    figures: dict  # {"BLEU-4": 20.9, "CIDEr": 49.8}
    source: str  # where the figures come from


def model_summary(metrics: dict, card: str = "") -> Summary:
    """What a model is good and bad at, and how good its captions are, from its metrics.json and card.md."""
    source, figures = headline_metrics(metrics)
    word, how_good = quality(figures.get("CIDEr"))
    sections = card_sections(card or "")
    good = _section(sections, ("good at", "strength", "intended use", "works well"))
    bad = _section(sections, ("weakness", "limitation", "bad at", "known problem"))
    if not good:
        data = next((k.split("/")[0] for k in metrics if "/" in k and isinstance(metrics[k], dict)), "")
        good = (f"Photos like the ones it learned from (the {data} dataset); the further a photo is from them, the worse "
                "the caption." if data else
                "Photos like the ones it learned from; the further a photo is from them, the worse the caption.")
    if not bad:
        bad = "Its card names no weaknesses; expect mistakes on photos unlike its training photos."
    return Summary(word, how_good, good, bad, figures, source)


@dataclass
class Comparison:
    basis: str  # where both sets of figures come from
    same_basis: bool  # False: each model measured its own way; compare with care
    rows: list[tuple[str, float | None, float | None]]  # (metric, new, active)
    worse: bool  # the new model scores lower on the main figure (CIDEr, else BLEU-4)


def compare_models(new: dict, active: dict) -> Comparison:
    """A new model's figures beside the active one's, measured the same way where both models allow it."""
    def evaluations(m):
        return {k: v for k, v in (m or {}).items() if isinstance(v, dict) and "/" in k and "CIDEr" in v}

    common = set(evaluations(new)) & set(evaluations(active))
    if common:
        key = max(common, key=lambda k: active[k].get("images") or 0)
        basis, a, b = f"both scored on {key}", new[key], active[key]
        same = True
    elif isinstance((new or {}).get("val_greedy"), dict) and isinstance((active or {}).get("val_greedy"), dict):
        basis, a, b = "validation during training (greedy decoding), each on its own validation photos", \
            new["val_greedy"], active["val_greedy"]
        same = True
    else:
        (basis, a), (_, b) = headline_metrics(new or {}), headline_metrics(active or {})
        basis, same = "each model's own scores (measured differently: compare with care)", False
    names = [n for n in ("BLEU-4", "CIDEr", "distinct_captions") if n in a or n in b]
    rows = [(n, a.get(n), b.get(n)) for n in names]
    main = next((n for n in ("CIDEr", "BLEU-4") if isinstance(a.get(n), (int, float))
                 and isinstance(b.get(n), (int, float))), None)
    return Comparison(basis, same, rows, main is not None and a[main] < b[main])


# What the project measured (models/default: Flickr8k, 6,000 training photos, 5 captions each): after one epoch
# (6,000 photo passes) greedy CIDEr 24.0, after six (36,000 passes) 44.7, and 49.8 with beam search. No run with
# fewer photos was measured well: a 300-photo, 3-epoch run wrote "a man in a man and a red" (issue 21).
REFERENCE_PHOTOS, REFERENCE_EPOCHS = 6_000, 6
TOO_FEW_PHOTOS = REFERENCE_PHOTOS // REFERENCE_EPOCHS  # 1,000: a sixth of the photos that gave a fair model


@dataclass
class Outlook:
    level: str  # "warning" (ask before starting), "info" (say it) or "ok"
    text: str


def dataset_outlook(photos: int, epochs: int) -> Outlook:
    """What a run on `photos` training photos for `epochs` epochs lets a user expect, in plain words."""
    passes = photos * epochs
    reference = (f"The default model learned from {REFERENCE_PHOTOS:,} photos x {REFERENCE_EPOCHS} epochs and "
                 f"writes fair captions (CIDEr 49.8); after 1 epoch of them it scored CIDEr 24, mostly wrong.")
    if photos < TOO_FEW_PHOTOS or passes < REFERENCE_PHOTOS:
        return Outlook("warning", f"{photos:,} photos x {epochs} epochs is too little to learn to write captions. "
                       "Expect broken, repeated sentences (a 300-photo, 3-epoch run wrote \"a man in a man and a "
                       f"red\"): use such a run to check that training works, not to get a model. {reference}")
    if photos < REFERENCE_PHOTOS or passes < REFERENCE_PHOTOS * REFERENCE_EPOCHS:
        return Outlook("info", f"{photos:,} photos x {epochs} epochs is less than the default model had: expect "
                       f"captions weaker than its. {reference}")
    return Outlook("ok", "")
