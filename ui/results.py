"""The review table: CaptionResults and the user's edited captions <-> the DataFrame shown in st.data_editor.

Captions are kept by image name (a dict), not by row, so that the table can be filtered (flagged or edited
rows only) and bulk-edited (find and replace) without losing an edit.
"""
from __future__ import annotations

import copy
import re

import numpy as np
import pandas as pd

from core.caption.tags import format_tags

# what a reviewer reads first comes first: the picture, the caption, whether to check it, what the classifier sees
COLUMNS = ["thumbnail", "look", "caption", "check", "confidence", "tags", "image", "score", "error"]
SHOW = ("all", "flagged", "edited")
FLAG_QUANTILE = 20  # without a calibrated confidence: "flagged" = a score among the lowest 20% of the batch


def flagged_names(results) -> set[str]:
    """Images that need a look: unreadable ones, and the captions to check.

    With a model whose confidence is calibrated (core.caption.confidence) that is each caption marked "check"; for
    other models, the lowest-scoring fifth of the batch.
    """
    if any(r.confidence is not None for r in results):
        return {r.image for r in results if r.error or r.check}
    scores = [r.score for r in results if r.score is not None and not r.error]
    low = np.percentile(scores, FLAG_QUANTILE) if scores else None
    return {r.image for r in results if r.error or (low is not None and r.score is not None and r.score <= low)}


def edited_names(results, captions: dict[str, str]) -> set[str]:
    return {r.image for r in results if not r.error and captions.get(r.image, r.caption) != r.caption}


def results_frame(results, thumbnails: dict[str, str | None], captions: dict[str, str] | None = None,
                  show: str = "all", selected: str | None = None) -> pd.DataFrame:
    """The rows to show: all, only flagged, or only edited; captions as the user last left them; "look" ticked
    on the row shown up close."""
    captions = captions or {}
    keep = {"flagged": flagged_names(results), "edited": edited_names(results, captions)}.get(show)
    rows = [
        {
            "thumbnail": thumbnails.get(r.image),
            "look": r.image == selected,
            "caption": captions.get(r.image, r.caption),
            "check": "error" if r.error else "check" if r.check else "",
            "image": r.image,
            "confidence": r.confidence,
            "tags": format_tags(r.tags),
            "score": None if r.score is None else round(float(r.score), 3),
            "error": r.error or "",
        }
        for r in results if keep is None or r.image in keep
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def merge_edits(captions: dict[str, str], edited: pd.DataFrame, results) -> dict[str, str]:
    """`captions` updated with the table's (possibly edited) captions, matched by image name; error rows stay empty."""
    errors = {r.image for r in results if r.error}
    out = dict(captions)
    if "caption" in edited and "image" in edited:
        for name, text in zip(edited["image"], edited["caption"]):
            if isinstance(text, str) and name not in errors:
                out[name] = text.strip()
    return out


def find_replace(results, captions: dict[str, str], find: str, replace: str,
                 match_case: bool = False) -> tuple[dict[str, str], int]:
    """Replace `find` (plain text, not a pattern) in every caption; -> (new captions, number of captions changed)."""
    if not find:
        return dict(captions), 0
    pattern = re.compile(re.escape(find), 0 if match_case else re.IGNORECASE)
    out, changed = dict(captions), 0
    for r in results:
        if r.error:
            continue
        old = captions.get(r.image, r.caption)
        new = " ".join(pattern.sub(lambda _: replace, old).split())  # no double spaces where a word was removed
        if new != old:
            out[r.image], changed = new, changed + 1
    return out, changed


def ticked(edited: pd.DataFrame) -> set[str]:
    """The images whose "look" box is ticked in the table as the user left it."""
    if "look" not in edited or "image" not in edited:
        return set()
    return {name for name, on in zip(edited["image"], edited["look"]) if on is True or on == 1}


def next_selected(selected: str | None, before: set[str], now: set[str]) -> str | None:
    """The row to show up close after the user ticked or unticked "look" boxes: the one ticked last, or none when
    the shown one was unticked. (st.data_editor in Streamlit 1.67 has no row selection; a tick box stands in.)"""
    fresh = sorted(now - before)
    if fresh:
        return fresh[-1]
    return selected if selected in now else None


def with_captions(results, captions: dict[str, str]) -> list:
    """Copies of `results` carrying the user's captions (for the CSV); the originals are untouched."""
    out = []
    for r in results:
        r = copy.copy(r)
        if not r.error and r.image in captions:
            r.caption = captions[r.image]
        out.append(r)
    return out
