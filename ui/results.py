"""The results table: CaptionResults <-> the DataFrame shown in st.data_editor (captions editable)."""
from __future__ import annotations

import copy

import pandas as pd

COLUMNS = ["thumbnail", "image", "caption", "score", "error"]


def results_frame(results, thumbnails: dict[str, str | None]) -> pd.DataFrame:
    rows = [
        {
            "thumbnail": thumbnails.get(r.image),
            "image": r.image,
            "caption": r.caption,
            "score": None if r.score is None else round(float(r.score), 3),
            "error": r.error or "",
        }
        for r in results
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def apply_edits(results, edited: pd.DataFrame) -> list:
    """Copies of `results` whose captions are the (possibly edited) ones in the table, matched by row."""
    captions = list(edited["caption"]) if "caption" in edited else []
    out = []
    for i, r in enumerate(results):
        r = copy.copy(r)
        if i < len(captions) and isinstance(captions[i], str) and not r.error:
            r.caption = captions[i].strip()
        out.append(r)
    return out
