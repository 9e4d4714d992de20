"""The grammar a reader notices (core.caption.grammar), rule by rule."""
import pytest

from core.caption.grammar import Grammar, vowel_sound

WORDS = {"zebra", "zebras", "apple", "apples", "dog", "dogs", "cat", "cats", "bench", "benches", "pony", "ponies",
         "man", "men", "bus", "glass", "dress", "dresses", "elephant", "elephants", "umbrella", "field", "bowl"}
fix = lambda text: " ".join(Grammar(WORDS).fix(text.split()))  # noqa: E731


@pytest.mark.parametrize("before, after", [
    ("a apple on a table", "an apple on a table"),
    ("a elephant and a umbrella", "an elephant and an umbrella"),
    ("an dog is running", "a dog is running"),
    ("a uniform and a one-way street", "a uniform and a one-way street"),  # by the sound, not the letter
    ("a hour", "an hour"),
])
def test_a_or_an(before, after):
    assert fix(before) == after


@pytest.mark.parametrize("before, after", [
    ("a man is sitting on a apples", "a man is sitting on apples"),  # never "a apples"
    ("a green apples in a bowl", "green apples in a bowl"),
    ("a zebras are standing", "zebras are standing"),
    ("a bus is parked", "a bus is parked"),  # "bus", "glass", "dress" are not plurals
    ("a glass of water", "a glass of water"),
])
def test_no_article_before_a_plural(before, after):
    assert fix(before) == after


@pytest.mark.parametrize("before, after", [
    ("two zebra are standing in a field", "two zebras are standing in a field"),
    ("three small pony", "three small ponies"),
    ("two zebras is standing", "two zebras are standing"),
    ("two men is walking", "two men are walking"),
    ("a dog are running", "a dog is running"),
    ("a man and a dog are running", "a man and a dog are running"),  # a plural subject of two nouns
    ("a brown and white dog are playing", "a brown and white dog is playing"),  # "and" inside the noun's colours
    ("a man and a white dog are running", "a man and a white dog are running"),
    ("some water is", "some water is"),  # a mass noun after "some" stays singular
])
def test_numbers_and_verbs_agree(before, after):
    assert fix(before) == after


def test_vowel_sound():
    assert [vowel_sound(w) for w in ("apple", "hour", "uniform", "european", "dog", "x-ray")] == [
        True, True, False, False, False, True]


def test_plurals_come_from_the_vocabulary():
    g = Grammar(WORDS)
    assert (g.singular("zebras"), g.singular("benches"), g.singular("ponies"), g.singular("men")) == (
        "zebra", "bench", "pony", "man")
    assert g.singular("bus") is None and g.singular("glass") is None and g.singular("horses") is None  # unknown
    assert g.plural_of("zebra") == "zebras" and g.plural_of("field") is None
