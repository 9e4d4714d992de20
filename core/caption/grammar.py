"""The grammar a reader notices, fixed on the caption's words after decoding: "an apple" (never "a apple"), no
article before a plural ("on a apples" -> "on apples"), a number with a plural ("two zebra" -> "two zebras"), and
the verb agreeing with its noun ("two zebras is" -> "two zebras are"). Standard library only.

A word is plural when the vocabulary also holds its singular ("zebras" -> "zebra", "dresses" -> "dress"), or it is
one of English's irregular plurals: so "bus", "grass" and "glass" stay singular without a dictionary. Each rule
changes only the words it is sure of and leaves a sentence it cannot read as it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

IRREGULAR = {"men": "man", "women": "woman", "children": "child", "people": "person", "mice": "mouse",
             "geese": "goose", "feet": "foot", "teeth": "tooth", "sheep": "sheep", "fish": "fish", "deer": "deer",
             "policemen": "policeman", "firemen": "fireman", "knives": "knife", "leaves": "leaf", "wolves": "wolf",
             "shelves": "shelf", "loaves": "loaf", "cattle": "cow"}
NOT_PLURAL = {"is", "was", "has", "his", "this", "its", "us", "yes", "as", "jeans", "pants", "shorts", "glasses",
              "sunglasses", "goggles", "scissors", "news", "physics", "species", "series", "tennis", "gas", "bus",
              "grass", "glass", "dress", "cross", "class", "chess", "kiss", "lens", "canvas", "atlas", "cactus",
              "octopus", "walrus", "hippopotamus", "asparagus", "hummus", "couscous", "boots"}
NUMBERS = {"two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "several", "many", "some", "few",
           "multiple", "numerous", "both", "these", "those", "various"}
# words between an article and its noun that do not change its number: "a green apples" -> "green apples"
MODIFIERS = {"red", "blue", "green", "yellow", "black", "white", "orange", "pink", "purple", "brown", "gray", "grey",
             "small", "large", "big", "little", "young", "old", "tall", "long", "short", "wooden", "ripe", "fresh",
             "sliced", "baby", "dark", "light", "colorful", "striped", "stuffed", "wild", "adult", "cute", "fluffy"}
# "an" goes by the sound, not the letter: "a uniform", "a one-way street", "an hour"
A_BEFORE_VOWEL = ("uni", "use", "usu", "uti", "ure", "euro", "eu", "one", "once", "ufo", "ukulele", "ewe")
AN_BEFORE_CONSONANT = ("hour", "honest", "honor", "honour", "heir", "mp3", "x-ray", "fbi", "nba", "nfl", "sms", "suv")


@dataclass
class Grammar:
    """The rules, with the vocabulary that tells plurals from singulars."""
    words: set[str] = field(default_factory=set)

    def singular(self, word: str) -> str | None:
        """The singular of a plural noun, None when `word` is not (known to be) a plural."""
        if word in IRREGULAR:
            return IRREGULAR[word]
        if word in NOT_PLURAL or len(word) < 3 or not word.endswith("s") or word.endswith("ss"):
            return None
        for cut, add in (("ies", "y"), ("ves", "f"), ("es", ""), ("s", "")):
            if word.endswith(cut) and word[: -len(cut)] + add in self.words:
                return word[: -len(cut)] + add
        return None

    def plural_of(self, word: str) -> str | None:
        """The plural the vocabulary holds for a singular noun, None when it holds none."""
        for p in (word + "s", word + "es", word[:-1] + "ies" if word.endswith("y") else None):
            if p and p in self.words and self.singular(p) == word:
                return p
        plural = {s: p for p, s in IRREGULAR.items()}.get(word)
        return plural if plural and plural != word and plural in self.words else None

    def fix(self, tokens: list[str]) -> list[str]:
        """A decoded caption's words -> the same words with the four rules applied."""
        return self.fix_aligned(tokens)[0]

    def fix_aligned(self, tokens: list[str]) -> tuple[list[str], list[int]]:
        """-> (the fixed words, for each the position of the decoded word it stands for): a dropped article has
        none, so a word's attention map stays its own."""
        out = self._numbers(list(tokens))
        out, kept = self._article_before_plural(out)
        out = self._verb_agreement(out)
        return self._a_or_an(out), kept

    def _numbers(self, t: list[str]) -> list[str]:
        """"two zebra" -> "two zebras" (a number, perhaps one modifier, then a singular noun with a known plural)."""
        for i, w in enumerate(t[:-1]):
            if w not in NUMBERS - {"some"}:  # "some water": a mass noun is singular
                continue
            j = i + 2 if t[i + 1] in MODIFIERS and i + 2 < len(t) else i + 1
            plural = self.plural_of(t[j])
            if plural:
                t[j] = plural
        return t

    def _article_before_plural(self, t: list[str]) -> tuple[list[str], list[int]]:
        """"on a apples" -> "on apples": an article before a plural noun (perhaps after one modifier) is dropped.
        -> (words, the position each kept word had)."""
        kept = []
        for i, w in enumerate(t):
            if w in ("a", "an") and i + 1 < len(t):
                j = i + 2 if t[i + 1] in MODIFIERS and i + 2 < len(t) else i + 1
                if self.singular(t[j]) and t[j] not in MODIFIERS:
                    continue
            kept.append(i)
        return [t[i] for i in kept], kept

    def _verb_agreement(self, t: list[str]) -> list[str]:
        """"two zebras is" -> "are"; "a zebra are" -> "is" (the noun right before the verb, its article before it
        and its modifiers: "a brown and white bear are" -> "is")."""
        for i, w in enumerate(t):
            if i == 0 or w not in ("is", "are"):
                continue
            noun = t[i - 1]
            if w == "is" and self.singular(noun) and "and" not in t[:i]:
                t[i] = "are"
            elif w == "are" and not self.singular(noun) and noun not in NUMBERS | MODIFIERS:
                k = i - 2  # back over the noun's modifiers: "a brown and white bear are" -> "is"
                while k >= 0 and (t[k] in MODIFIERS or t[k] == "and"):
                    k -= 1
                if k >= 0 and t[k] in ("a", "an") and "and" not in t[:k]:  # not "a man and a woman are"
                    t[i] = "is"
        return t

    @staticmethod
    def _a_or_an(t: list[str]) -> list[str]:
        """"a apple" -> "an apple", "an dog" -> "a dog", by the next word's first sound."""
        for i, w in enumerate(t[:-1]):
            if w in ("a", "an"):
                t[i] = "an" if vowel_sound(t[i + 1]) else "a"
        return t


def vowel_sound(word: str) -> bool:
    """Whether a word starts with a vowel sound (an apple, an hour) rather than a consonant (a uniform, a dog)."""
    w = word.lower()
    if w.startswith(AN_BEFORE_CONSONANT):
        return True
    if w.startswith(A_BEFORE_VOWEL):
        return False
    return w[:1] in "aeiou" and w != ""
