"""The Caption page's tag settings: the threshold (sidebar, for uploads and folders alike: it goes into the page's
DecodeOptions) and the folder flow's tag outputs (a tags file beside each photo, a tags field in metadata.jsonl)."""
from __future__ import annotations

import streamlit as st

from core.base.config import DecodeOptions

THRESHOLD_KEY = "tag-threshold"
TAGS_EXT = ".tags.txt"  # photo.jpg -> photo.tags.txt; photo.txt stays the caption sidecar (core.caption.library.tags_path)


def tag_threshold_ui() -> float:
    return st.slider("Tag threshold", 0.0, 1.0, DecodeOptions.tag_threshold, 0.05, key=THRESHOLD_KEY,
                     help="Tags are the objects the image classifier sees, with how sure it is (cat 0.96). "
                          "Only tags at least this sure are shown and written; lower it for more tags.")


def tag_outputs_ui() -> dict:
    """LibraryConfig's tag outputs, from two checkboxes of the folder form (the threshold is the sidebar's)."""
    c = st.columns(4)
    tags_file = c[0].checkbox(f"the tags in a {TAGS_EXT} file beside each photo", key="lib-tags-file",
                              help="One comma-separated line (cat, sofa), as WD14 taggers write for dataset "
                                   "tools; kohya's merge_dd_tags_to_metadata.py reads it with "
                                   f"--caption_extension {TAGS_EXT}")
    jsonl_tags = c[1].checkbox("the tags in metadata.jsonl", key="lib-jsonl-tags",
                               help="A tags field beside text (with metadata.jsonl above)")
    return {"tags_ext": TAGS_EXT if tags_file else None, "jsonl_tags": jsonl_tags}
