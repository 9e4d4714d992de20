"""The review table of the Caption page: caption uploads into it (batch after batch, with progress and Cancel),
review and edit, look at one image up close; every row and edit is kept on disk (core.caption.store), so a reload
comes back to them. The folder flow (ui.library_view) reviews a folder's captions in the same table."""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import streamlit as st

from core.base.config import DecodeOptions
from core.bundle.store import BundleError
from core.caption import store as caption_store
from core.caption.client import WorkerError
from core.caption.library import csv_bytes
from core.caption.store import UPLOADS, Table
from core.caption.tags import format_tags
from ui import warm
from ui.images import (
    attention_overlay,
    data_url,
    open_image,
    preview_bytes,
    thumbnail_jpeg,
)
from ui.inputs import unique_name
from ui.results import (
    SHOW,
    edited_names,
    find_replace,
    merge_edits,
    next_selected,
    results_frame,
    ticked,
    with_captions,
)

MAX_PICTURES = 1000  # rows beyond this keep no thumbnail or preview: a batch of 10,000 stays light in memory


def format_rate(done: int, total: int, started: float) -> str:
    """"Captioned 32 of 100 · 12.3 images/s · about 6 s left"."""
    elapsed = max(time.perf_counter() - started, 1e-9)
    rate = done / elapsed
    text = f"Captioned {done:,} of {total:,}"
    if done:
        left = (total - done) / rate
        text += f" · {rate:.1f} images/s · about {left:.0f} s left" if left >= 1 else f" · {rate:.1f} images/s"
    return text


def cancel_button(state: dict, key: str) -> None:
    """A Cancel button for the run that `state` describes: it stops after the current batch, keeping everything.

    Pressing it sets state["cancel"], which the running loop checks after each batch; the page's rerun may
    also stop that loop at its next drawing call. With Streamlit's fast reruns the new run starts at once,
    beside the old one, so it waits for the old one (finished_drawing) before drawing what was done."""
    st.button("Cancel", key=key, on_click=lambda: state.update(cancel=True))


@contextlib.contextmanager
def running(state: dict):
    """Hold state["lock"] while a batch runs, so that a rerun draws its results only once it has stopped."""
    state["lock"] = lock = threading.Lock()
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def wait_until_stopped(state: dict) -> None:
    lock = state.get("lock")
    if lock is not None and lock.locked():
        with st.spinner("Stopping after the current batch..."):
            lock.acquire(timeout=300)
            lock.release()


def load_captioner(bundle):
    """The bundle's Captioner, or None (with the reason on the page) when the model cannot be loaded."""
    try:
        with st.spinner(f"Loading the model {bundle.name}..."):
            return warm.captioner(bundle.path, "auto")
    except BundleError as e:
        st.error(f"The model {bundle.name} cannot be loaded: {e}")
        return None
    except WorkerError as e:  # the worker died while loading it (out of memory...)
        st.error(f"The model {bundle.name} could not be loaded. {e}")
        return None


VISIBLE_ROWS = 6
ROW_HEIGHT = 72  # px: thumbnails big enough to recognise a photo (Streamlit's default rows are 35 px)
EDIT_HINT = ("Double-click a caption (or select it and type) to edit it; the CSV holds your edits. Tick *view* to see a "
             "photo up close, with the model's other captions and where it looked. Flag: *error* (unreadable) or "
             "*check*: a calibrated confidence among the lowest quarter of the model's captions of unseen photos.")


# st.data_editor's cell editor (glide-data-grid, as bundled in Streamlit 1.67) schedules a zero-delay timer on every key
# pressed in it; the timer commits the edit once Enter (or Tab) has set where the selection moves next, and commits it
# with the typed text only if it was Enter's own timer. A browser that is busy (a loaded machine, fast typing) handles
# the Enter before the timers of the last letters typed: the first of those then commits "no value" with Enter's move,
# the editor closes and the typed caption is gone, without a word (upstream: glideapps/glide-data-grid#1201). This
# script, installed once per page, holds back an Enter or Tab pressed in that editor until the timers queued before it
# have run, then hands the same key to the editor: its commit is then the one with the text.
KEEP_TYPED_EDITS = """<style>[data-testid="stElementContainer"]:has(script[data-keep-typed-edits]){display:none}</style>
<script data-keep-typed-edits>
(() => {
  if (window.__keepTypedEdits) return;
  window.__keepTypedEdits = true;
  window.addEventListener("keydown", (ev) => {
    const commits = (ev.key === "Enter" && !ev.shiftKey) || ev.key === "Tab";
    const editor = ev.target instanceof Element ? ev.target.closest(".gdg-clip-region") : null;
    if (!ev.isTrusted || !commits || !editor || ev.isComposing || ev.keyCode === 229) return;
    ev.preventDefault();
    ev.stopImmediatePropagation();
    const key = {key: ev.key, code: ev.code, shiftKey: ev.shiftKey, ctrlKey: ev.ctrlKey, altKey: ev.altKey,
                 metaKey: ev.metaKey, bubbles: true, cancelable: true};
    const target = ev.target;
    setTimeout(() => { if (target.isConnected) target.dispatchEvent(new KeyboardEvent("keydown", key)); }, 0);
  }, true);
})();
</script>"""


def keep_typed_edits() -> None:
    """Put KEEP_TYPED_EDITS in the page (it draws nothing): an edit typed into the review table is never dropped."""
    st.html(KEEP_TYPED_EDITS, unsafe_allow_javascript=True)


# ------------------------------------------------------------------------------------------- the session

def session_id() -> str:
    """This tab's session: kept in the page's URL (?session=...), so that a reload finds its tables again.

    The URL rather than "the latest session": two tabs then never write into each other's table. A visit
    without one (a new tab, a bookmark) starts a new session and is offered the last one (offer_last_session)."""
    sid = st.session_state.get("caption_session")
    if not caption_store.valid_session_id(sid):
        sid = st.query_params.get("session")
        sid = sid if caption_store.valid_session_id(sid) else caption_store.new_session_id()
        st.session_state.caption_session = sid
    if st.query_params.get("session") != sid:  # the page menu's links drop the query: put it back
        st.query_params["session"] = sid
    return sid


def offer_last_session(sid: str) -> None:
    """On a fresh session, a button that reopens the tables of the session saved last (another tab, yesterday)."""
    if Table(sid, UPLOADS).exists() or any(caption_store.session_dir(sid).glob("folder-*/meta.json")):
        return
    last = caption_store.latest_session()
    if last is None or last[0] == sid:
        return
    when = time.strftime("%d %b %H:%M", time.localtime(last[1]))
    if st.button(f"Open the captions of your last session (saved {when})", key="open-last-session"):
        st.session_state.caption_session = last[0]
        st.query_params["session"] = last[0]
        for key in ("batch", "folder_batch", "library"):
            st.session_state.pop(key, None)
        st.rerun()


def new_batch(sid: str, table: str) -> dict:
    return {"id": f"{sid}-{table}", "session": sid, "table": table, "results": [], "images": {}, "thumbs": {},
            "captions": {}, "saved": {}, "total": 0, "models": [], "version": 0}


def load_batch(sid: str, table: str, review_csv: Path | None = None) -> dict | None:
    """The table as saved on disk (None when there is none), as a batch the review table draws."""
    store = Table(sid, table)
    if not store.exists():
        return None
    data = store.load(review_csv)
    batch = new_batch(sid, table)
    batch.update(results=data.results, images=dict(data.pictures), captions=dict(data.captions),
                 saved=dict(data.captions), total=data.total, models=data.models, meta=data.meta,
                 model=data.models[-1] if data.models else "")
    for name, path in data.thumbs.items():
        try:
            batch["thumbs"][name] = data_url(path.read_bytes())
        except OSError:
            pass  # a thumbnail deleted by hand: the row stays, without its picture
    return batch


def uploads_batch(sid: str) -> dict | None:
    """This session's table of uploads: in memory while the tab is open, else as saved on disk."""
    batch = st.session_state.get("batch")
    if batch is None or batch.get("session") != sid:
        batch = load_batch(sid, UPLOADS)
        if batch is not None:
            st.session_state.batch = batch
        else:
            st.session_state.pop("batch", None)
    return batch


def store_safely(batch: dict, write) -> tuple[bool, object]:
    """Run a write to the session's folder -> (done, what it returned); a disk that refuses it costs the copy on
    disk, not the captions."""
    try:
        return True, write()
    except OSError as e:
        batch["unsaved"] = str(e)
        return False, None


# ------------------------------------------------------------------------------------------- captioning

def caption_uploads(bundle, items: list[tuple[str, bytes]], options: DecodeOptions = DecodeOptions(),
                    sid: str | None = None) -> None:
    """Caption the items batch by batch, adding them to the session's table (st.session_state.batch) and to disk
    as they come; Cancel keeps the rows done so far."""
    captioner = load_captioner(bundle)
    if captioner is None:
        return
    sid = sid or session_id()
    batch = uploads_batch(sid) or new_batch(sid, UPLOADS)
    store = Table(sid, UPLOADS)
    seen = {r.image for r in batch["results"]}
    items = [(unique_name(name, seen), source) for name, source in items]  # a second cat.jpg is "cat (2).jpg"
    originals = dict(items)
    batch.update(total=len(batch["results"]) + len(items), cancel=False, model=bundle.name)  # model: the latest
    if bundle.name not in batch["models"]:
        batch["models"].append(bundle.name)
    st.session_state.batch = batch  # rows appear in it as they are captioned, so a Cancel loses none
    box = st.empty()  # the progress bar and the Cancel button, cleared when the batch ends
    with box.container():
        bar = st.progress(0.0, text=f"Captioning {len(items)} images...")
        cancel_button(batch, "cancel-upload")
    started, done = time.perf_counter(), 0
    with running(batch):
        try:
            for results in captioner.iter_captions(items, options=options):
                previews, thumbs = {}, {}
                for r in results:
                    if len(batch["thumbs"]) + len(thumbs) < MAX_PICTURES:
                        previews[r.image] = preview_bytes(originals[r.image])
                        thumbs[r.image] = thumbnail_jpeg(originals[r.image]) or b""
                _, written = store_safely(batch, lambda: store.add(results, {k: v for k, v in thumbs.items() if v},
                                                                   {k: v for k, v in previews.items() if v},
                                                                   model=bundle.name, total=batch["total"]))
                written = written or {}
                for name, preview in previews.items():
                    batch["images"][name] = written.get(name, (None,))[0] or preview  # on disk, else in memory
                    batch["thumbs"][name] = data_url(thumbs[name])
                batch["results"] += results
                done += len(results)
                if batch.get("cancel"):
                    break
                bar.progress(done / len(items), text=format_rate(done, len(items), started))
        except WorkerError as e:  # the worker crashed or was killed: what it captioned is kept
            st.error(f"Captioning stopped after {done:,} of {len(items):,} images. {e}")
    box.empty()


# ------------------------------------------------------------------------------------------- reviewing

def review_ui(batch: dict, title: str | None = None, downloads: bool = True) -> None:
    """The review table: filters, find and replace, inline edits (kept on disk as they are made), a row up close."""
    wait_until_stopped(batch)
    done, total = len(batch["results"]), batch.get("total", len(batch["results"]))
    models = ", ".join(batch.get("models") or [batch.get("model", "")])
    st.subheader(title or f"Results ({models})")
    if done < total:
        st.info(f"Cancelled after {done:,} of {total:,} images; the captions so far are below.")
    if batch.get("unsaved"):
        st.warning(f"The captions could not be saved on this computer ({batch['unsaved']}); they stay on this page "
                   "until it is closed or reloaded. Download the CSV to keep them.")
    bid = batch["id"]
    controls = st.columns([2, 2, 2, 1], vertical_alignment="bottom")
    show = controls[0].segmented_control("Show", SHOW, default="all", key=f"show-{bid}") or "all"
    find = controls[1].text_input("Find in captions", key=f"find-{bid}")
    replace = controls[2].text_input("Replace with", key=f"replace-{bid}")
    if controls[3].button("Replace all", disabled=not find, key=f"replace-all-{bid}"):
        batch["captions"], n = find_replace(batch["results"], batch["captions"], find, replace)
        batch["version"] = batch.get("version", 0) + 1  # a fresh table, built from the new captions
        st.toast(f"Replaced in {n} caption{'s' if n != 1 else ''}.")
    st.caption(EDIT_HINT)
    keep_typed_edits()
    key = f"editor-{bid}-{show}-{batch.get('version', 0)}"
    selected = batch.get("selected")
    frame = results_frame(batch["results"], batch["thumbs"], batch["captions"], show, selected)
    # the table takes the page's width, so the columns after the caption stay in view; six rows high, so that the
    # close-up view below it is in sight
    height = 38 + ROW_HEIGHT * max(1, min(len(frame), VISIBLE_ROWS))
    edited = st.data_editor(
        frame, key=key, hide_index=True, placeholder="", row_height=ROW_HEIGHT, height=height,
        disabled=["thumbnail", "image", "check", "confidence", "tags", "score", "error"],
        column_config={
            "thumbnail": st.column_config.ImageColumn("", width=ROW_HEIGHT + 8, pinned=True),
            "look": st.column_config.CheckboxColumn("view", width=56, pinned=True,
                                                    help="see this photo up close"),
            "caption": st.column_config.TextColumn("caption", width="large", pinned=True),
            "check": st.column_config.TextColumn("flag", width=56,
                                                 help="error: unreadable; check: a caption to look at"),
            "confidence": st.column_config.ProgressColumn(
                "conf.", min_value=0.0, max_value=1.0, format="%.2f", width=80,
                help="the chance that the caption is acceptable, calibrated on photos the model never saw"),
            "tags": st.column_config.TextColumn("tags", width="medium", help="objects the image classifier sees"),
            "image": st.column_config.TextColumn("file", width="medium"),
            "score": st.column_config.NumberColumn("score", width="small", help="mean log-probability per word"),
            "error": st.column_config.TextColumn("error", width="medium")})
    batch["captions"] = merge_edits(batch["captions"], edited, batch["results"])
    if batch["captions"] != batch.get("saved"):  # every edit is on disk before the next one
        saved, _ = store_safely(batch, lambda: Table(batch["session"], batch["table"]).save_captions(batch["captions"]))
        if saved:
            batch["saved"] = dict(batch["captions"])
    now = ticked(edited)
    before = batch.setdefault("ticked", {}).get(key, {selected} if selected else set())
    batch["ticked"] = {key: now}
    batch["selected"] = next_selected(selected, before, now)
    detail_ui(batch)
    if downloads:
        buttons = st.container(horizontal=True)
        buttons.download_button("Download CSV", csv_bytes(with_captions(batch["results"], batch["captions"])),
                                file_name="captions.csv", mime="text/csv", on_click="ignore", type="primary")
        clear_ui(batch, buttons)


def clear_ui(batch: dict, where) -> None:
    """Clear the table (and its copy on disk); with edits, only once the user confirms."""
    edits = len(edited_names(batch["results"], batch["captions"]))
    if where.button("Clear the table", key=f"clear-{batch['id']}"):
        if not edits:
            return _clear(batch)
        batch["confirm_clear"] = True
    if batch.get("confirm_clear"):
        st.warning(f"Clear {len(batch['results']):,} rows, {edits} of them with captions you edited? "
                   "This cannot be undone.")
        answer = st.container(horizontal=True)
        if answer.button("Yes, clear them", key=f"clear-yes-{batch['id']}", type="primary"):
            _clear(batch)
        if answer.button("Keep them", key=f"clear-no-{batch['id']}"):
            batch["confirm_clear"] = False
            st.rerun()


def _clear(batch: dict) -> None:
    store_safely(batch, Table(batch["session"], batch["table"]).clear)
    for key in ("batch", "folder_batch"):
        if st.session_state.get(key) is batch:
            del st.session_state[key]
    st.rerun()


def picture(batch: dict, name: str):
    """What the close-up view shows: a preview on disk or in memory, or a folder's photo itself."""
    return open_image(batch["images"].get(name) or b"")


def detail_ui(batch: dict) -> None:
    name = batch.get("selected")
    results = {r.image: r for r in batch["results"]}
    if name not in results:
        st.caption("Tick *view* on a row to see its photo here, larger, with the model's other captions and where it "
                   "looked for each word.")
        return
    r = results[name]
    img = picture(batch, r.image)
    left, right = st.columns([2, 3])
    if img is not None:
        left.image(img, width="stretch")
    with right:
        _facts(batch, r, img)


def _facts(batch: dict, r, img) -> None:
    st.markdown(f"**{r.image}**")
    if r.error:
        st.error(f"{r.image}: {r.error}")
        return
    st.markdown(f"**{batch['captions'].get(r.image, r.caption)}**")
    facts = [f"objects seen: {format_tags(r.tags)}" if r.tags else "",
             f"the caption was made to name: *{r.guided}*" if r.guided else "",
             f"confidence {r.confidence:.2f}" + (" — check this one" if r.check else "") if r.confidence is not None else ""]
    if any(facts):
        st.caption(" · ".join(f for f in facts if f))
    if r.alternatives:
        st.dataframe([{"other captions": c, "score": round(s, 3)} for c, s in r.alternatives], hide_index=True)
    if r.attention is not None and img is not None:
        st.markdown("Where the model looked for each word:")
        st.image([attention_overlay(img, a, size=120) for a in r.attention], caption=r.words, width=120)
