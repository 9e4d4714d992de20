"""core.evaluate.scores: one formatting for figures, plain-words summaries from a bundle's own files, the comparison of a
new model with the active one, and what a dataset's size lets a user expect."""
from core.evaluate.scores import METRIC_HELP, compare_models, card_sections, dataset_outlook, demote_headings, format_metric, model_summary, quality


def test_one_formatting_for_every_figure():
    # regression: Home wrote a BLEU-4 of 0 as "0.000" (below 1: three decimals), the sidebar as "0.0"
    assert format_metric("BLEU-4", 0.0) == format_metric("BLEU-4", 0) == "0.0"
    assert format_metric("CIDEr", 49.82) == "49.8" and format_metric("BLEU-4", 0.4) == "0.4"
    assert format_metric("distinct_captions", 1759) == "1,759" and format_metric("epoch", 3) == "3"
    assert format_metric("CIDEr", None) == format_metric("CIDEr", float("nan")) == format_metric("CIDEr", "x") == "—"


def test_quality_words_follow_cider_not_one_model():
    assert quality(90)[0] == "very good" and quality(49.8)[0] == "fair" and quality(3.0)[0] == "poor"
    assert quality(None)[0] == "unknown"


CARD = """# Model X: a long research title

Some intro.

## Metrics

| a | b |
|---|---|

## Good at

Dogs on beaches.

More on dogs.

## Known weaknesses

| table first | is skipped |
|---|---|

Cats: it calls them dogs.

```
# a comment in code, not a heading
```
"""


def test_summary_comes_from_the_bundles_metrics_and_card():
    metrics = {"val_greedy": {"BLEU-4": 5.0, "CIDEr": 12.0}, "dogs/val": {"BLEU-4": 21.0, "CIDEr": 62.0, "images": 9}}
    s = model_summary(metrics, CARD)
    assert (s.quality, s.good_at, s.bad_at) == ("good", "Dogs on beaches.", "Cats: it calls them dogs.")
    assert s.figures["CIDEr"] == 62.0 and s.source.startswith("dogs/val")  # the evaluation, not training's own
    bare = model_summary({"val_greedy": {"BLEU-4": 1.0, "CIDEr": 3.0}}, "")
    assert bare.quality == "poor" and "learned from" in bare.good_at and "names no weaknesses" in bare.bad_at
    assert model_summary({}, "").quality == "unknown"
    twin = {"dogs/val": {"CIDEr": 50.0, "images": 9, "measured_on": "by its twin, trained without these photos"}}
    assert model_summary(twin, "").source.endswith("by its twin, trained without these photos")  # said, not hidden
    assert all(len(METRIC_HELP[n]) < 200 for n in ("BLEU-4", "CIDEr"))  # one line each


def test_card_headings_are_demoted_outside_code():
    out = demote_headings(CARD, below=3)
    assert out.startswith("#### Model X") and "\n##### Known weaknesses" in out
    assert "\n# a comment in code, not a heading" in out  # inside ``` it is not a heading
    assert demote_headings("###### deep", below=3) == "###### deep"  # Markdown has six levels
    assert "known weaknesses" in card_sections(CARD)


def test_comparison_uses_the_same_basis_when_it_can():
    active = {"val_greedy": {"BLEU-4": 17.7, "CIDEr": 44.7}, "flickr8k/val": {"BLEU-4": 20.9, "CIDEr": 49.8,
                                                                               "images": 1000}}
    weak = {"val_greedy": {"BLEU-4": 1.2, "CIDEr": 3.0, "distinct_captions": 4}}
    c = compare_models(weak, active)
    assert c.same_basis and "validation during training" in c.basis and c.worse
    assert c.rows == [("BLEU-4", 1.2, 17.7), ("CIDEr", 3.0, 44.7), ("distinct_captions", 4, None)]
    both = compare_models({**weak, "flickr8k/val": {"BLEU-4": 22.0, "CIDEr": 55.0, "images": 1000}}, active)
    assert "flickr8k/val" in both.basis and not both.worse  # a shared evaluation beats training's own figures
    assert not compare_models({}, active).worse  # nothing to compare: nothing to confirm


def test_dataset_outlook_thresholds_from_the_default_models_figures():
    small = dataset_outlook(300, 3)  # the run: "a man in a man and a red"
    assert small.level == "warning" and "too little" in small.text and "6,000 photos x 6 epochs" in small.text
    assert dataset_outlook(5_000, 1).level == "warning"  # fewer photo passes than one epoch of the default's data
    assert dataset_outlook(999, 40).level == "warning"  # many epochs do not make up for too few photos
    assert dataset_outlook(3_000, 6).level == "info" and dataset_outlook(6_000, 3).level == "info"
    assert dataset_outlook(6_000, 6).level == dataset_outlook(118_000, 10).level == "ok"
