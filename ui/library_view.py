"""The folder flow of the Caption page: a photo library on this computer, captioned in place, resumable.

Only paths travel: images are read from disk a batch at a time, and the page keeps the latest rows (with
thumbnails) and the counts, so a library of tens of thousands of photos never sits in memory.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from core.library import EXISTING, LibraryConfig, Progress, caption_library, find_images
from core.worker_client import WorkerError
from ui.images import thumbnail_data_url
from ui.review import cancel_button, load_captioner, running, wait_until_stopped
from ui.tags import tag_outputs_ui

LATEST_ROWS = 50  # rows of the newest captions shown while a library is captioned
# smaller than the command line's 32: the progress moves, and Cancel stops, every 16 photos (the browser test sets 2,
# so that its Cancel lands half-way however fast this machine captions its tiny test model)
PAGE_BATCH = int(os.environ.get("CAPTION_PAGE_BATCH", "16"))
EXISTING_HELP = {"skip": "skip images that already have a caption (continues an interrupted run)",
                 "overwrite": "caption every image again, replacing old captions",
                 "append": "caption every image again, adding to old captions"}


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def folder_form(can_caption: bool) -> LibraryConfig | None:
    """The library folder and what to write; a LibraryConfig when Start is pressed and the settings make sense."""
    root = st.text_input("Folder of photos on this computer", key="lib-root",
                         placeholder="/home/me/Pictures/holiday  or  C:\\Users\\me\\Pictures")
    c = st.columns(3)
    recursive = c[0].checkbox("Include subfolders", value=True, key="lib-recursive")
    include = c[1].text_input("Only files matching", key="lib-include", placeholder="*.jpg, 2024/*")
    exclude = c[2].text_input("Leave out files matching", key="lib-exclude", placeholder="*_thumb.*, raw/*")
    st.markdown("**Write the captions to**")
    c = st.columns(4)
    want_csv = c[0].checkbox("captions.csv in the folder", value=True, key="lib-csv")
    sidecar = c[1].checkbox("a .txt file beside each photo", key="lib-sidecar")
    jsonl = c[2].checkbox("metadata.jsonl (Hugging Face)", key="lib-jsonl")
    metadata = c[3].checkbox("the photo's own metadata (alt text)", key="lib-metadata",
                             help="XMP description and alt text, EXIF ImageDescription, PNG Description; "
                                  "JPEG and PNG only; the pixels are not touched")
    tags = tag_outputs_ui()
    c = st.columns([2, 2, 2, 1])
    existing = c[0].selectbox("Photos that already have a caption", EXISTING, format_func=EXISTING_HELP.get,
                              key="lib-existing")
    prefix = c[1].text_input("Prefix (e.g. a trigger word)", key="lib-prefix", placeholder="sks, ")
    suffix = c[2].text_input("Suffix", key="lib-suffix")
    k = c[3].number_input("Captions per photo", 1, 10, 1, key="lib-k")
    folder = Path(root.strip()).expanduser() if root.strip() else None
    found = None
    if folder is not None:
        if not folder.is_dir():
            st.error(f"There is no folder {folder} on this computer.")
        else:
            found = len(find_images(folder, recursive, _patterns(include), _patterns(exclude)))
            st.caption(f"{found:,} images found in {folder}.")
    start = st.button("Caption the folder", type="primary", key="lib-start",
                      disabled=not (can_caption and found and (want_csv or sidecar or jsonl or metadata
                                                                      or tags["tags_ext"])))
    if not start:
        return None
    return LibraryConfig(str(folder), recursive=recursive, include=_patterns(include), exclude=_patterns(exclude),
                         csv=str(folder / "captions.csv") if want_csv else None, sidecar_ext=".txt" if sidecar else None,
                         jsonl=jsonl, metadata=metadata, existing=existing, prefix=prefix, suffix=suffix,
                         num_captions=int(k), **tags)


def run_library(cfg: LibraryConfig, bundle, beam: int, max_len: int, object_words: bool = True) -> None:
    """Caption the folder with progress; Cancel (or leaving the page) stops after the current batch, all kept."""
    cfg.beam, cfg.max_len, cfg.batch_size, cfg.object_words = beam, max_len, PAGE_BATCH, object_words
    captioner = load_captioner(bundle)
    if captioner is None:
        return
    state = {"root": cfg.root, "csv": cfg.csv, "done": 0, "total": None, "skipped": 0, "failed": 0, "rows": [],
             "finished": False, "started": time.time()}
    st.session_state.library = state
    box = st.empty()  # progress, Cancel and the latest rows while it runs; the summary replaces them
    with box.container():
        bar = st.progress(0.0, text="Looking at what is already done...")
        cancel_button(state, "cancel-library")
        table = st.empty()

    def report(p: Progress) -> None:
        rows = [dict(r, thumbnail=thumbnail_data_url(Path(r["path"])) if not r["error"] else None)
                for r in p.latest]
        state.update(done=p.done, total=p.total, skipped=p.skipped, failed=p.failed,
                     rows=(rows[::-1] + state["rows"])[:LATEST_ROWS])
        eta = f" · about {p.eta_s:.0f} s left" if p.eta_s and p.eta_s >= 1 else ""
        bar.progress(p.done / max(p.total, 1), text=f"Captioned {p.done:,} of {p.total:,} · "
                                                      f"{p.images_per_s:.1f} images/s{eta}")  # a Cancel stops here
        table.dataframe(_frame(state["rows"]), hide_index=True, column_config=_COLUMNS)

    with running(state):
        try:
            final = caption_library(cfg, captioner, on_progress=report,
                                    should_stop=lambda: bool(state.get("cancel")))
            state.update(done=final.done, total=final.total, skipped=final.skipped, failed=final.failed,
                         finished=final.done >= final.total)
        except WorkerError as e:  # the worker crashed or was killed: every caption written so far stays written
            state["stopped"] = str(e)
    box.empty()


_COLUMNS = {"thumbnail": st.column_config.ImageColumn("", width="small"),
            "caption": st.column_config.TextColumn("caption", width="large")}


def _frame(rows: list[dict]) -> pd.DataFrame:
    rows = [dict(r, check="check this one" if r.get("check") else "") for r in rows]
    return pd.DataFrame(rows, columns=["thumbnail", "image", "caption", "check", "confidence", "tags", "error"])


def library_summary(state: dict) -> None:
    wait_until_stopped(state)
    done, total = state["done"], state["total"]
    if state["finished"] or (total is not None and done >= total):  # stopped after its last batch: all done
        st.success(f"Captioned {done:,} images in {state['root']}"
                   + (f" ({state['skipped']:,} already had captions)" if state["skipped"] else "") + ".")
    elif state.get("stopped"):
        st.error(f"Captioning stopped after {done:,} images. {state['stopped']} Everything captioned so far is "
                 "written; press the button again to continue where it stopped.")
    elif total is None:
        st.info("Stopped before the first batch. Press the button again to start.")
    else:
        st.info(f"Cancelled after {done:,} of {total:,} images. Everything captioned so far is written; "
                "press the button again to continue where it stopped.")
    if state["failed"]:
        st.warning(f"{state['failed']:,} images could not be read or written; see the error column of captions.csv.")
    if state["rows"]:
        st.markdown("The latest captions:")
        st.dataframe(_frame(state["rows"]), hide_index=True, column_config=_COLUMNS)
    csv_path = Path(state["csv"]) if state.get("csv") else None
    if csv_path and csv_path.is_file():
        st.download_button("Download captions.csv", csv_path.read_bytes(), file_name="captions.csv", mime="text/csv",
                           on_click="ignore", type="primary")


def folder_flow(bundle, beam: int, max_len: int, object_words: bool = True) -> None:
    st.caption("Captions are written as they come, so an interrupted run continues where it stopped.")
    cfg = folder_form(bundle is not None)
    if cfg is not None:
        run_library(cfg, bundle, beam, max_len, object_words)
    if "library" in st.session_state:
        library_summary(st.session_state.library)
