"""The folder flow of the Caption page: a photo library on this computer, captioned in place, resumable.

Writing into the photos or beside them (sidecars, metadata) takes two steps: the captions go into a review
table first (rows in the run's review CSV as they come, in the session's folder, core.caption.store), and
"Write N captions" then writes the reviewed text through core.caption.reviewed. Writing only a CSV or metadata.jsonl
is one step, as before. Only paths travel: images are read from disk a batch at a time, and the page keeps
thumbnails of the first rows only, so a library of tens of thousands of photos never sits in memory.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from core.base.config import DecodeOptions
from core.base.paths import PAGE_BATCH_ENV
from core.caption import store as caption_store
from core.caption.client import WorkerError
from core.caption.library import (
    EXISTING,
    LibraryConfig,
    LibraryError,
    Progress,
    caption_library,
    find_images,
)
from core.caption.reviewed import reviewed_results, write_reviewed
from core.caption.store import Table, folder_table
from ui.images import data_url, thumbnail_data_url, thumbnail_jpeg
from ui.results import with_captions
from ui.review import (
    MAX_PICTURES,
    cancel_button,
    load_batch,
    load_captioner,
    review_ui,
    running,
    store_safely,
    wait_until_stopped,
)
from ui.tags import tag_outputs_ui

WRITTEN = "folder_written"  # what the last "Write N captions" wrote, and into which folder's table
LATEST_ROWS = 50  # rows of the newest captions shown while a library is captioned
# smaller than the command line's 32: the progress moves, and Cancel stops, every 16 photos (the browser test sets 2,
# so that its Cancel lands half-way however fast this machine captions its tiny test model)
PAGE_BATCH = int(os.environ.get(PAGE_BATCH_ENV, "16"))
EXISTING_HELP = {"skip": "skip images that already have a caption (continues an interrupted run)",
                 "overwrite": "caption every image again, replacing old captions",
                 "append": "caption every image again, adding to old captions"}


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def plain(e: Exception) -> str:
    """An error's own words for the page: core's refusals and DiskFullError already say what to do; an OSError's
    "[Errno 28]" means nothing to a person, its file name does."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f": {e.filename}" if e.filename else "")
    return str(e)


# an XMP sidecar (photo.xmp) output, where core.caption.library offers one
XMP_SIDECAR = "xmp_sidecar" in {f.name for f in dataclasses.fields(LibraryConfig)}
FORM_KEYS = ("lib-root", "lib-recursive", "lib-include", "lib-exclude", "lib-csv", "lib-sidecar", "lib-jsonl",
             "lib-metadata", "lib-xmp", "lib-existing", "lib-prefix", "lib-suffix", "lib-k")


def writes_photos(cfg: LibraryConfig) -> bool:
    """Whether the run writes into the photos or files beside them: then the captions are reviewed first."""
    return bool(cfg.sidecar_ext or cfg.metadata or cfg.tags_ext or getattr(cfg, "xmp_sidecar", False))


def output_names(cfg: LibraryConfig) -> str:
    names = [("captions.csv", cfg.csv), (f"a {cfg.sidecar_ext} file beside each photo", cfg.sidecar_ext),
             ("metadata.jsonl", cfg.jsonl), ("the photos' metadata", cfg.metadata),
             ("an XMP sidecar per photo", getattr(cfg, "xmp_sidecar", False))]
    return ", ".join(n for n, on in names if on)


def restore_form(sid: str) -> None:
    """After a reload: the form as it was when this session's folder table was last used."""
    if "lib-root" in st.session_state:
        return
    tables = list(caption_store.session_dir(sid).glob("folder-*/meta.json"))
    if not tables:
        return
    latest = max(tables, key=lambda p: p.stat().st_mtime).parent.name
    form = Table(sid, latest).meta().get("form", {})
    for key, value in form.items():
        if key in FORM_KEYS:
            st.session_state[key] = value


def folder_form(can_caption: bool) -> tuple[LibraryConfig | None, bool]:
    """The library folder and what to write -> (its LibraryConfig when the settings make sense, Start pressed)."""
    root = st.text_input("Folder of photos on this computer", key="lib-root",
                         placeholder="/home/me/Pictures/holiday  or  C:\\Users\\me\\Pictures")
    c = st.columns(3)
    recursive = c[0].checkbox("Include subfolders", value=True, key="lib-recursive")
    include = c[1].text_input("Only files matching", key="lib-include", placeholder="*.jpg, 2024/*")
    exclude = c[2].text_input("Leave out files matching", key="lib-exclude", placeholder="*_thumb.*, raw/*")
    st.markdown("**Write the captions to**")
    c = st.columns(5 if XMP_SIDECAR else 4)
    st.session_state.setdefault("lib-csv", True)  # a default set here, not in the call: restore_form may set it too
    want_csv = c[0].checkbox("captions.csv in the folder", key="lib-csv")
    sidecar = c[1].checkbox("a .txt file beside each photo", key="lib-sidecar")
    jsonl = c[2].checkbox("metadata.jsonl (Hugging Face)", key="lib-jsonl")
    metadata = c[3].checkbox("the photo's own metadata (alt text)", key="lib-metadata",
                             help="XMP description and alt text, EXIF ImageDescription, PNG Description; "
                                  "JPEG and PNG only; the pixels are not touched")
    tags = tag_outputs_ui()
    xmp = c[4].checkbox("XMP sidecar (photo.xmp, the photo is not touched)", key="lib-xmp") if XMP_SIDECAR else False
    c = st.columns([2, 2, 2, 1])
    existing = c[0].selectbox("Photos that already have a caption", EXISTING, format_func=EXISTING_HELP.get,
                              key="lib-existing")
    prefix = c[1].text_input("Prefix (e.g. a trigger word)", key="lib-prefix", placeholder="sks, ")
    suffix = c[2].text_input("Suffix", key="lib-suffix")
    k = c[3].number_input("Captions per photo", 1, 10, key="lib-k")
    folder = Path(root.strip()).expanduser() if root.strip() else None
    found = None
    if folder is not None:
        if not folder.is_dir():
            st.error(f"There is no folder {folder} on this computer.")
        else:
            found = len(find_images(folder, recursive, _patterns(include), _patterns(exclude)))
            st.caption(f"{found:,} images found in {folder}.")
    if sidecar or metadata or xmp or tags["tags_ext"]:
        st.caption("Nothing is written into the photos or beside them yet: the captions go into a table to review "
                   "and edit first, then **Write** puts the reviewed text where you chose.")
    cfg = None
    if found and (want_csv or sidecar or jsonl or metadata or xmp or tags["tags_ext"]):
        extra = {"xmp_sidecar": xmp} if XMP_SIDECAR else {}
        try:
            cfg = LibraryConfig(str(folder), recursive=recursive, include=_patterns(include),
                                exclude=_patterns(exclude), csv=str(folder / "captions.csv") if want_csv else None,
                                sidecar_ext=".txt" if sidecar else None, jsonl=jsonl, metadata=metadata,
                                existing=existing, prefix=prefix, suffix=suffix,
                                decode=DecodeOptions(num_captions=int(k)), **extra, **tags)
        except ValueError as e:  # settings core.caption.library refuses (a system folder): its reason, and no button
            st.error(plain(e))
    start = st.button("Caption the folder", type="primary", key="lib-start", disabled=not (can_caption and cfg is not None))
    return cfg, start and cfg is not None


class _Recording:
    """The captioner, keeping each batch's full results (other captions, attention) for the review table."""

    def __init__(self, captioner):
        self.captioner, self.latest = captioner, []

    def iter_captions(self, items, **options):
        for results in self.captioner.iter_captions(items, **options):
            self.latest = results
            yield results


def review_csv(sid: str, root: str | Path) -> Path:
    """The review run's CSV: core.caption.library's journal, so that Cancel and continue lose nothing."""
    return caption_store.session_dir(sid) / folder_table(Path(root)) / "review.csv"


def review_config(cfg: LibraryConfig, sid: str) -> LibraryConfig:
    """The first step's run: the same photos and captions, written only to the review CSV."""
    off = {"xmp_sidecar": False} if XMP_SIDECAR else {}
    return dataclasses.replace(cfg, csv=str(review_csv(sid, cfg.root)), sidecar_ext=None, jsonl=False,
                               coco_results=None, metadata=False, tags_ext=None, existing="skip", **off)


def run_library(cfg: LibraryConfig, bundle, options: DecodeOptions = DecodeOptions(), sid: str | None = None,
                form: dict | None = None) -> None:
    """Caption the folder with progress; Cancel (or leaving the page) stops after the current batch, all kept.
    When it writes into or beside the photos, the captions go to the review table instead (see the module)."""
    # the sidebar's decoding with the form's captions per photo; only the run decodes (writing reviewed text does not)
    cfg.decode, cfg.batch_size = dataclasses.replace(options, num_captions=cfg.decode.num_captions), PAGE_BATCH
    captioner = load_captioner(bundle)
    if captioner is None:
        return
    review = sid is not None and writes_photos(cfg)
    run_cfg = review_config(cfg, sid) if review else cfg
    state = {"root": cfg.root, "csv": cfg.csv, "done": 0, "total": None, "skipped": 0, "failed": 0, "rows": [],
             "finished": False, "started": time.time(), "review": review}
    st.session_state.library = state
    if review:
        store = Table(sid, folder_table(Path(cfg.root)))
        store_safely(state, lambda: store.set_meta({"root": cfg.root, "form": form or {}}))
        st.session_state.pop("folder_batch", None)  # read again from disk once this run ends
        recorder = captioner = _Recording(captioner)
        pictures = [len(store.load().thumbs) if store.exists() else 0]
    box = st.empty()  # progress, Cancel and the latest rows while it runs; the summary replaces them
    with box.container():
        bar = st.progress(0.0, text="Looking at what is already done...")
        cancel_button(state, "cancel-library")
        table = st.empty()

    def report(p: Progress) -> None:
        rows = [dict(r, thumbnail=thumbnail_data_url(Path(r["path"])) if not r["error"] else None)
                for r in p.latest]
        if review:
            keep(p.latest, recorder.latest)
        state.update(done=p.done, total=p.total, skipped=p.skipped, failed=p.failed,
                     rows=(rows[::-1] + state["rows"])[:LATEST_ROWS])
        eta = f" · about {p.eta_s:.0f} s left" if p.eta_s and p.eta_s >= 1 else ""
        bar.progress(p.done / max(p.total, 1), text=f"Captioned {p.done:,} of {p.total:,} · "
                                                      f"{p.images_per_s:.1f} images/s{eta}")  # a Cancel stops here
        table.dataframe(_frame(state["rows"]), hide_index=True, column_config=_COLUMNS, row_height=48)

    def keep(rows: list[dict], results: list) -> None:
        """The batch's rows into the review table on disk: the full results, named as the CSV names them."""
        thumbs = {}
        for row, r in zip(rows, results):
            r.image, r.caption = row["image"], row["caption"]  # the relative name; the caption with prefix/suffix
            if not row["error"] and pictures[0] + len(thumbs) < MAX_PICTURES:
                thumbs[r.image] = thumbnail_jpeg(Path(row["path"])) or b""
        pictures[0] += len(thumbs)
        store_safely(state, lambda: store.add(results[: len(rows)], {k: v for k, v in thumbs.items() if v},
                                              photos={row["image"]: row["path"] for row in rows},
                                              model=bundle.name))

    with running(state):
        try:
            final = caption_library(run_cfg, captioner, on_progress=report,
                                    should_stop=lambda: bool(state.get("cancel")))
            state.update(done=final.done, total=final.total, skipped=final.skipped, failed=final.failed,
                         finished=final.done >= final.total)
        except WorkerError as e:  # the worker crashed or was killed: every caption written so far stays written
            state["stopped"] = str(e)
        except LibraryError as e:  # an output it may not use (a CSV of another program): nothing was changed
            state["refused"] = plain(e)
        except OSError as e:  # a full disk, a folder it may not write: in words, everything written so far kept
            state["stopped"] = plain(e)
    box.empty()


_COLUMNS = {"thumbnail": st.column_config.ImageColumn("", width=56),
            "caption": st.column_config.TextColumn("caption", width="large"),
            "check": st.column_config.TextColumn("flag", width=56),
            "confidence": st.column_config.NumberColumn("conf.", format="%.2f", width=60),
            "image": st.column_config.TextColumn("file")}


def _frame(rows: list[dict]) -> pd.DataFrame:
    rows = [dict(r, check="error" if r.get("error") else "check" if r.get("check") else "") for r in rows]
    return pd.DataFrame(rows, columns=["thumbnail", "caption", "check", "confidence", "tags", "image", "error"])


def library_summary(state: dict) -> None:
    wait_until_stopped(state)
    done, total = state["done"], state["total"]
    where = "for review (nothing is written into the photos yet)" if state.get("review") else f"in {state['root']}"
    kept = ("Every caption so far is in the review table" if state.get("review")
            else "Everything captioned so far is written")
    if state.get("refused"):
        st.error(state["refused"])
    elif state["finished"] or (total is not None and done >= total):  # stopped after its last batch: all done
        st.success(f"Captioned {done:,} images {where}"
                   + (f" ({state['skipped']:,} already had captions)" if state["skipped"] else "") + ".")
    elif state.get("stopped"):
        st.error(f"Captioning stopped after {done:,} images. {state['stopped']} {kept}; press the button again "
                 "to continue where it stopped.")
    elif total is None:
        st.info("Stopped before the first batch. Press the button again to start.")
    else:
        st.info(f"Cancelled after {done:,} of {total:,} images. {kept}; press the button again to continue where "
                "it stopped.")
    if state["failed"]:
        st.warning(f"{state['failed']:,} images could not be read or written; see the error column"
                   + ("." if state.get("review") else " of captions.csv."))
    if state.get("review"):
        return  # the review table below shows every row
    if state["rows"]:
        st.markdown("The latest captions:")
        st.dataframe(_frame(state["rows"]), hide_index=True, column_config=_COLUMNS, row_height=48)
    csv_path = Path(state["csv"]) if state.get("csv") else None
    if csv_path and csv_path.is_file():
        st.download_button("Download captions.csv", csv_path.read_bytes(), file_name="captions.csv", mime="text/csv",
                           on_click="ignore", type="primary")


def folder_batch(sid: str, root: str) -> dict | None:
    """The review table of the folder: in memory while the tab is open, else as saved (the review CSV's rows)."""
    table = folder_table(Path(root))
    batch = st.session_state.get("folder_batch")
    if batch is None or batch.get("table") != table or batch.get("session") != sid:
        batch = load_batch(sid, table, review_csv(sid, root))
        if batch is None or not batch["results"]:
            return None
        for r in batch["results"]:  # rows the CSV has and rows.jsonl lacks (a crash between the two): the photo
            batch["images"].setdefault(r.image, Path(root) / r.image)
        batch["total"] = len(batch["results"])  # a cancelled run is told by the summary above
        st.session_state.folder_batch = batch
    return batch


def write_ui(batch: dict, cfg: LibraryConfig) -> None:
    """Step two: "Write N captions" writes the reviewed text to the outputs chosen in the form."""
    reviewed = with_captions(batch["results"], batch["captions"])
    n = len(reviewed_results(reviewed))
    st.markdown(f"When the captions read right: write them to {output_names(cfg)}.")
    # a callback, not the button's return value: a click right after an edit in the table can come with the table's
    # own rerun, which would stop the run that saw the click before it got here; the request outlives that run
    st.button(f"Write {n:,} captions", type="primary", key="lib-write", disabled=not n,
              on_click=lambda: batch.update(write_requested=True))
    if batch.pop("write_requested", False) and n:
        write = dataclasses.replace(cfg, prefix="", suffix="", batch_size=PAGE_BATCH)  # the text as reviewed
        # no drawing while it writes (a spinner, not a progress bar): a rerun (any click) can stop a run only at a
        # drawing call, so the writing is never left half-way (writing 50 photos' sidecars and metadata: 0.6 s)
        with st.spinner(f"Writing {n:,} captions..."):
            try:
                progress, missing = write_reviewed(write, reviewed)
                done = {"done": progress.done, "skipped": progress.skipped, "failed": progress.failed,
                        "missing": len(missing), "to": output_names(cfg), "existing": cfg.existing}
            except (LibraryError, OSError) as e:  # a full disk, an output refused: what was written stays written
                done = {"error": plain(e)}
            # in the session, not in the batch: "Caption the folder" (continue) reloads the batch from disk, and what
            # was written must still be said after that rerun and any other
            st.session_state[WRITTEN] = dict(done, table=batch["id"])
    done = st.session_state.get(WRITTEN)
    if not done or done["table"] != batch["id"]:
        return
    if done.get("error"):
        st.error(f"The captions could not be written: {done['error']}")
        return
    st.success(f"Wrote {done['done']:,} reviewed captions to {done['to']}.")
    if done["skipped"]:
        st.info(f"{done['skipped']:,} photos already had a caption there and were left as they were. To replace "
                f"those, choose \"{EXISTING_HELP['overwrite']}\" above and write again.")
    if done["failed"]:
        st.warning(f"{done['failed']:,} captions could not be written; see the error column of captions.csv.")
    if done["missing"]:
        st.warning(f"{done['missing']:,} rows name photos that are no longer in the folder; they were not written.")


def folder_flow(bundle, options: DecodeOptions = DecodeOptions(), sid: str | None = None) -> None:
    st.caption("Captions are written as they come, so an interrupted run continues where it stopped.")
    if sid:
        restore_form(sid)
    cfg, start = folder_form(bundle is not None)
    form = {k: st.session_state[k] for k in FORM_KEYS if k in st.session_state}
    if cfg is not None and start:
        run_library(cfg, bundle, options, sid=sid, form=form)
    if "library" in st.session_state:
        library_summary(st.session_state.library)
    if sid and cfg is not None and writes_photos(cfg):
        batch = folder_batch(sid, cfg.root)
        if batch is not None:
            review_ui(batch, title="Review the captions, then write them")
            write_ui(batch, cfg)
