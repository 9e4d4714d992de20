"""The upload flow of the Caption page: caption a batch with progress and Cancel, review it, look at one image."""
from __future__ import annotations

import contextlib
import threading
import time
import uuid

import streamlit as st

from core.bundle import BundleError
from core.library import csv_bytes
from core.tags import format_tags
from core.worker_client import WorkerError
from ui import warm
from ui.images import attention_overlay, open_image, preview_bytes, thumbnail_data_url
from ui.results import SHOW, find_replace, merge_edits, results_frame, with_captions
from ui.tags import tag_threshold

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


def caption_uploads(bundle, items: list[tuple[str, bytes]], beam: int, max_len: int, object_words: bool = True) -> None:
    """Caption the items batch by batch into st.session_state.batch; Cancel keeps the rows done so far."""
    captioner = load_captioner(bundle)
    if captioner is None:
        return
    # the batch keeps previews, not the uploaded originals (the session would hold every upload twice)
    batch = {"id": uuid.uuid4().hex, "model": bundle.name, "results": [], "images": {}, "thumbs": {},
             "captions": {}, "total": len(items)}
    originals = dict(items)
    st.session_state.batch = batch  # rows appear in it as they are captioned, so a Cancel loses none
    box = st.empty()  # the progress bar and the Cancel button, cleared when the batch ends
    with box.container():
        bar = st.progress(0.0, text=f"Captioning {len(items)} images...")
        cancel_button(batch, "cancel-upload")
    started = time.perf_counter()
    with running(batch):
        try:
            for results in captioner.iter_captions(items, beam=beam, max_len=max_len, object_words=object_words,
                                                   tag_threshold=tag_threshold()):
                for r in results:
                    if len(batch["thumbs"]) < MAX_PICTURES:
                        batch["images"][r.image] = preview_bytes(originals[r.image])
                        batch["thumbs"][r.image] = thumbnail_data_url(originals[r.image])
                batch["results"] += results
                done = len(batch["results"])
                if batch.get("cancel"):
                    break
                bar.progress(done / len(items), text=format_rate(done, len(items), started))
        except WorkerError as e:  # the worker crashed or was killed: what it captioned is kept
            st.error(f"Captioning stopped after {len(batch['results']):,} of {len(items):,} images. {e}")
    box.empty()


def review_ui(batch: dict) -> None:
    wait_until_stopped(batch)
    done, total = len(batch["results"]), batch.get("total", len(batch["results"]))
    st.subheader(f"Results ({batch['model']})")
    if done < total:
        st.info(f"Cancelled after {done:,} of {total:,} images; the captions so far are below.")
    controls = st.columns([2, 2, 2, 1], vertical_alignment="bottom")
    show = controls[0].segmented_control("Show", SHOW, default="all", key=f"show-{batch['id']}") or "all"
    find = controls[1].text_input("Find in captions", key=f"find-{batch['id']}")
    replace = controls[2].text_input("Replace with", key=f"replace-{batch['id']}")
    if controls[3].button("Replace all", disabled=not find):
        batch["captions"], n = find_replace(batch["results"], batch["captions"], find, replace)
        batch["version"] = batch.get("version", 0) + 1  # a fresh table, built from the new captions
        st.toast(f"Replaced in {n} caption{'s' if n != 1 else ''}.")
    st.caption("Click a caption to edit it; the CSV holds your edits. Flagged: unreadable, or \"check this one\": "
               "a calibrated confidence among the lowest quarter of the model's captions of unseen photos.")
    frame = results_frame(batch["results"], batch["thumbs"], batch["captions"], show)
    edited = st.data_editor(
        frame, key=f"editor-{batch['id']}-{show}-{batch.get('version', 0)}", hide_index=True, placeholder="",
        disabled=["thumbnail", "image", "check", "confidence", "tags", "score", "error"],
        column_config={"thumbnail": st.column_config.ImageColumn("", width="small"),
                       "caption": st.column_config.TextColumn("caption", width="large"),
                       "confidence": st.column_config.ProgressColumn(
                           "confidence", min_value=0.0, max_value=1.0, format="%.2f",
                           help="the chance that the caption is acceptable, calibrated on photos the model never saw"),
                       "tags": st.column_config.TextColumn("tags", help="objects the image classifier sees"),
                       "score": st.column_config.NumberColumn("score", help="mean log-probability per word")})
    batch["captions"] = merge_edits(batch["captions"], edited, batch["results"])
    st.download_button("Download CSV", csv_bytes(with_captions(batch["results"], batch["captions"])),
                       file_name="captions.csv", mime="text/csv", on_click="ignore", type="primary")


def detail_ui(batch: dict) -> None:
    if not batch["results"]:
        return
    st.subheader("One image up close")
    results = {r.image: r for r in batch["results"]}
    r = results[st.selectbox("Image", list(results))]
    img = open_image(batch["images"].get(r.image, b""))
    left, right = st.columns([1, 2])
    if img is not None:
        left.image(img, width="stretch")
    if r.error:
        right.error(f"{r.image}: {r.error}")
        return
    right.markdown(f"**{batch['captions'].get(r.image, r.caption)}**")
    facts = [f"objects seen: {format_tags(r.tags)}" if r.tags else "",
             f"the caption was made to name: *{r.guided}*" if r.guided else "",
             f"confidence {r.confidence:.2f}" + (" — check this one" if r.check else "") if r.confidence is not None else ""]
    if any(facts):
        right.caption(" · ".join(f for f in facts if f))
    right.dataframe([{"alternative": c, "score": round(s, 3)} for c, s in r.alternatives], hide_index=True)
    if r.attention is not None and img is not None:
        st.markdown("Where the model looked for each word:")
        st.image([attention_overlay(img, a, size=160) for a in r.attention], caption=r.words, width=160)
