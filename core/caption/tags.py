"""Object words from the backbone's own ImageNet classifier: a photo's tags, and the nouns that guide its caption.

The caption data may rarely show a cat (15 of Flickr8k's 6,000 training photos), but the backbone was trained on
1.28 million ImageNet photos and knows five kinds of domestic cat. Its 1000 class probabilities are summed into
plain nouns (core.data.object_words): the tags. A confident tag whose noun
the caption model knows becomes a constraint for beam search (core.nn.decode), so the caption names it.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

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
    return top_tags(noun_probs(logits), top, min_prob)


def top_tags(per_noun, top: int = 3, min_prob: float = TAG_MIN_PROB) -> list[list[tuple[str, float]]]:
    """The nouns' probabilities (B, N) (noun_probs) -> per image, up to `top` (noun, probability) pairs."""
    ow = object_words()
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


# ----------------------------------------------------------------------------- no person where the classifier sees none
# A caption model trained on Flickr8k (people in 70% of its captions) puts a man into any photo it does not know
# ("a man in a blue shirt is sitting on a cat"). Where the classifier is sure of one animal or object that is
# usually seen without people, and sees nothing that comes with people (clothes, gear one wears or rides,
# instruments one plays), the caption may not name a person. "Usually seen without people" is measured from
# caption text (tools/measure_person_share.py -> core/data/person_share.json): of the captions naming the noun,
# few name a person too (zebra 7%, cat 10%; not ball 58% or swing 94%). The ban is a decode-time mask
# (core.nn.decode.beam_search's `banned`), so the caption is the model's best sentence without those words.
NO_PERSON_MIN_PROB = 0.90  # the classifier's top noun at least this sure
PERSON_CUE_MIN_PROB = 0.05  # a person cue counts from this probability (all cue nouns summed)
PEOPLE_SHARE_MAX = 0.35  # the rule holds for nouns whose captions name a person at most this often...
PEOPLE_SHARE_MIN_CAPTIONS = 20  # ... measured on at least this many captions (else the rule stays out of it)
PERSON_SHARE = Path(__file__).resolve().parent.parent / "data" / "person_share.json"
PERSON_WORDS = frozenset("""
    man men woman women person people persons boy boys girl girls child children kid kids toddler toddlers lady
    ladies guy guys gentleman teenager teenagers teen teens someone somebody he she player players skier skiers
    surfer surfers biker bikers cyclist cyclists rider riders snowboarder skateboarder skateboarders climber
    climbers swimmer swimmers runner runners crowd couple family friends mother father mom dad worker workers
    policeman officer officers soldier soldiers athlete athletes team audience spectators baby babies
    """.split())  # not "adult": "an adult elephant" (a "baby zebra" is lost: "a baby in a green shirt" is worse)
# the words that put a person in a caption without naming one: "a cat wearing a white shirt"
WORN_WORDS = frozenset("shirt shirts jacket jackets wearing wears dress dresses uniform uniforms".split())
PERSON_CUES = frozenset("""
    abaya apron bikini bra breastplate cardigan cloak coat cuirass diaper gasmask gown hoopskirt jacket jeans jersey
    kimono lipstick mask miniskirt mitten mortarboard necklace overskirt pajama pickelhaube poncho sarong sock
    sombrero stole suit sunglasses sweatshirt swimsuit tie uniform vest vestment wig bearskin bonnet cap hat helmet
    sandal shoe boot clog loafer slipper stethoscope snorkel diver groom pirate player paddle parachute racket puck
    barbell dumbbell unicycle bicycle bike tricycle scooter snowmobile go-kart sled rickshaw crutch stretcher
    microphone stage accordion banjo bassoon cello drum flute guitar harmonica harp maraca marimba oboe ocarina
    panpipe saxophone trombone trumpet violin ski
    """.split()) | {"baseball player", "swimming trunks"}


@lru_cache(maxsize=1)
def people_free_nouns(path: Path = PERSON_SHARE) -> frozenset[str]:
    """The nouns whose captions seldom name a person (PEOPLE_SHARE_MAX, on PEOPLE_SHARE_MIN_CAPTIONS or more)."""
    counts = json.loads(Path(path).read_text(encoding="utf-8"))["nouns"]
    return frozenset(n for n, (named, with_person) in counts.items()
                     if named >= PEOPLE_SHARE_MIN_CAPTIONS and with_person <= PEOPLE_SHARE_MAX * named)


def person_banned(noun_probs_row, stoi: dict) -> list[int]:
    """One image's noun probabilities (N,) -> the caption vocabulary's person and clothing words (PERSON_WORDS,
    WORN_WORDS), when the classifier's top
    noun is an animal or object seen mostly without people, at NO_PERSON_MIN_PROB or more, and no person cue
    reaches PERSON_CUE_MIN_PROB; else []."""
    ow = object_words()
    probs = [float(p) for p in noun_probs_row]
    top = max(range(len(probs)), key=probs.__getitem__)
    if probs[top] < NO_PERSON_MIN_PROB or ow.nouns[top] in PERSON_CUES or ow.nouns[top] not in people_free_nouns():
        return []
    if sum(p for n, p in zip(ow.nouns, probs) if n in PERSON_CUES) >= PERSON_CUE_MIN_PROB:
        return []
    return sorted(stoi[w] for w in PERSON_WORDS | WORN_WORDS if w in stoi)


MISSED_TAG_MIN_PROB = 0.5  # a tag confident enough that a caption which leaves it out may be wrong


def missed_tag(tags: list[tuple[str, float]], words: list[str]) -> float:
    """The probability of the likeliest confident tag (a noun a caption would name: guidable, at
    MISSED_TAG_MIN_PROB or more) whose words the caption does not use; 0.0 if it names every such tag.
    The confidence's second input (core.caption.confidence): "two girls on a bench" beside zebra 0.96 -> 0.96."""
    ow = object_words()
    said = set(words)
    missed = [p for noun, p in tags
              if p >= MISSED_TAG_MIN_PROB and noun in ow.guide and not said & set(ow.words.get(noun, [noun]))]
    return max(missed, default=0.0)
