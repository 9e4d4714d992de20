"""The review table (ui/results.py): captions kept by image name through filters, edits and find-and-replace."""
from __future__ import annotations

import pandas as pd

from core.caption.result import CaptionResult
from ui import results


def batch():
    return [CaptionResult("a.jpg", "a dog on the grass", -0.4), CaptionResult("b.jpg", "", None, error="not an image"),
            CaptionResult("c.jpg", "a Dog in a park", -2.5), CaptionResult("d.jpg", "a cat", -0.9),
            CaptionResult("e.jpg", "two dogs", -0.6)]


def test_table_rows_and_filters():
    rs = batch()
    df = results.results_frame(rs, {"a.jpg": "data:image/jpeg;base64,xx"})
    assert list(df.columns) == results.COLUMNS and list(df["image"]) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    assert df.loc[0, "thumbnail"].startswith("data:") and df.loc[1, "error"] == "not an image"
    flagged = results.results_frame(rs, {}, show="flagged")
    assert list(flagged["image"]) == ["b.jpg", "c.jpg"]  # unreadable, and the least confident fifth
    assert results.results_frame(rs, {}, show="edited").empty
    captions = {"d.jpg": "a sleepy cat"}
    edited = results.results_frame(rs, {}, captions, show="edited")
    assert list(edited["image"]) == ["d.jpg"] and edited.loc[0, "caption"] == "a sleepy cat"


def test_edits_are_merged_by_name_and_survive_a_filter():
    rs = batch()
    shown = results.results_frame(rs, {}, show="flagged")  # rows b, c only: row 1 is c.jpg, not b.jpg
    shown.loc[1, "caption"] = "  a dog in a park at noon "
    shown.loc[0, "caption"] = "ignored for an error row"
    captions = results.merge_edits({}, shown, rs)
    assert captions == {"c.jpg": "a dog in a park at noon"}
    out = results.with_captions(rs, captions)
    assert [r.caption for r in out][:3] == ["a dog on the grass", "", "a dog in a park at noon"]
    assert rs[2].caption == "a Dog in a park"  # the originals are untouched
    assert results.merge_edits(captions, pd.DataFrame(), rs) == captions


def test_find_and_replace_in_every_caption():
    rs = batch()
    captions, n = results.find_replace(rs, {"a.jpg": "a dog on the lawn"}, "dog", "puppy")
    assert n == 3 and captions["a.jpg"] == "a puppy on the lawn" and captions["c.jpg"] == "a puppy in a park"
    assert captions["e.jpg"] == "two puppys"  # plain text, case-insensitive, inside words too
    captions, n = results.find_replace(rs, {}, "a ", "", match_case=True)
    assert captions["a.jpg"] == "dog on the grass" and n == 3
    assert results.find_replace(rs, {}, "", "x") == ({}, 0)
    assert results.find_replace(rs, {}, "(", "[") == ({}, 0)  # not a regular expression: no error
