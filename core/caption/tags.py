"""Object words from the backbone's own ImageNet classifier: a photo's tags, and the nouns that guide its caption.

The caption data may rarely show a cat (15 of Flickr8k's 6,000 training photos), but the backbone was trained on
1.28 million ImageNet photos and knows five kinds of domestic cat. Its 1000 class probabilities are summed into
plain nouns (core.data.object_words): the tags. A confident tag whose noun
the caption model knows becomes a constraint for beam search (core.nn.decode), so the caption names it.
"""
from __future__ import annotations

from core.base.config import DecodeOptions
from core.data.object_words import object_words

TAG_MIN_PROB = DecodeOptions.tag_threshold  # a tag worth showing (the threshold and how many are kept: DecodeOptions)
GUIDE_MIN_PROB = 0.70  # a tag confident enough to force its noun into the caption (Flickr8k dev: precision 92%, CIDEr +1.3)


def noun_probs(logits):
    """ImageNet logits (B, 1000) -> the probabilities of the N plain nouns (B, N): each noun's classes summed."""
    import torch

    ow = object_words()
    probs = logits.float().softmax(-1)  # (B, 1000)
    index = torch.tensor(ow.class_noun, device=probs.device).expand_as(probs)  # (B, 1000)
    return torch.zeros(probs.size(0), len(ow.nouns), device=probs.device).scatter_add_(1, index, probs)  # (B, N)


def image_tags(logits, top: int = 3, min_prob: float = TAG_MIN_PROB) -> list[list[tuple[str, float]]]:
    """ImageNet logits (B, 1000) -> per image, up to `top` (noun, probability) pairs, likeliest first."""
    ow = object_words()
    per_noun = noun_probs(logits)  # (B, N)
    p, i = per_noun.topk(min(top, len(ow.nouns)), dim=1)  # (B, top)
    return [[(ow.nouns[n], round(float(q), 3)) for q, n in zip(ps, ns) if q >= min_prob]
            for ps, ns in zip(p.tolist(), i.tolist())]


def format_tags(tags: list[tuple[str, float]]) -> str:
    """[("cat", 0.97), ("bed", 0.12)] -> "cat 0.97; bed 0.12" (the CSV and table cell)."""
    return "; ".join(f"{noun} {prob:.2f}" for noun, prob in tags)


def tag_list(tags: list[tuple[str, float]]) -> str:
    """[("cat", 0.97), ("hot dog", 0.12)] -> "cat, hot dog": the comma list of WD14-style tag files, which
    dataset tools read (kohya's sd-scripts: merge_dd_tags_to_metadata.py; taggui); likeliest first, no numbers."""
    return ", ".join(noun.replace(",", " ") for noun, _ in tags)


def guide_words(tags: list[tuple[str, float]], stoi: dict, min_prob: float = GUIDE_MIN_PROB,
                max_nouns: int = 1) -> list[list[int]]:
    """The constraints for one image: for each confident, guidable tag the model can say, its word ids.

    -> [[id("cat"), id("cats"), id("kitten")]] or []; `stoi` is the caption vocabulary's word -> id map.
    """
    ow = object_words()
    sets = []
    for noun, prob in tags:
        if prob < min_prob or noun not in ow.guide:
            continue
        ids = sorted({stoi[w] for w in ow.words[noun] if w in stoi})
        if noun in stoi and ids:  # the noun itself must be known, not only a loose synonym of it
            sets.append(ids)
        if len(sets) == max_nouns:
            break
    return sets
