"""Caption page: upload images (or a zip of them), caption them in one batch, edit the captions, download a CSV."""
import uuid

import streamlit as st

from core.bundle import BundleError, headline_metrics
from core.caption import csv_bytes
from core.data import FORMAT_NAMES
from core.jobs import models_dir
from ui.images import attention_overlay, open_image, preview_bytes, thumbnail_data_url
from ui.inputs import UPLOAD_TYPES, read_uploads, sample_images
from ui.loader import bundle_choices, get_captioner
from ui.results import apply_edits, results_frame


def options_ui():
    """Model, beam width and maximum length from the sidebar; the model is None when there is none."""
    bundles, active = bundle_choices(models_dir())
    with st.sidebar:
        name = st.selectbox("Model", [b.name for b in bundles], index=active, key="model")
        bundle = next((b for b in bundles if b.name == name), None)
        if bundle is not None and not bundle.usable:  # a damaged model folder: the reason, not a traceback
            st.error(f"The model {bundle.name} cannot be used: {bundle.problem}")
            bundle = None
        elif bundle is not None:
            _, figures = headline_metrics(bundle.metrics)
            decoder = {"show_tell": "Show-and-Tell", "attention": "attention"}.get(bundle.config.get("decoder"), "?")
            st.caption(f"{decoder} decoder · "
                       + " · ".join(f"{k} {v:.1f}" for k, v in figures.items()))
        beam = st.slider("Beam width", 1, 10, 3, help="1 = greedy; wider searches more sentences, slower")
        max_len = st.slider("Maximum length (words)", 5, 50, 20)
    return bundle, beam, max_len


def inputs_ui(can_caption: bool):
    """The images to caption now, as (name, bytes) items, or None when no button was pressed."""
    files = st.file_uploader(f"Images ({FORMAT_NAMES}) or a zip of images", type=UPLOAD_TYPES,
                             accept_multiple_files=True)
    buttons = st.container(horizontal=True)
    caption = buttons.button("Caption uploaded images", type="primary", disabled=not (files and can_caption))
    samples = buttons.button("Try sample images", disabled=not can_caption, help="A cat, an astronaut, coffee, a rocket")
    if caption:
        items, problems = read_uploads(files)
        for problem in problems:
            st.warning(problem)
        return items
    return sample_images() if samples else None


def caption_batch(bundle, items, beam: int, max_len: int) -> dict:
    weights = bundle.path / "model.safetensors"
    try:
        captioner = get_captioner(str(bundle.path), "auto", weights.stat().st_mtime if weights.exists() else 0.0)
    except BundleError as e:
        st.error(f"The model {bundle.name} cannot be loaded: {e}")
        return None
    bar = st.progress(0.0, text=f"Captioning {len(items)} images...")
    try:
        results = captioner.caption(items, beam=beam, max_len=max_len,
                                    on_progress=lambda done, total: bar.progress(done / max(total, 1),
                                                                                 text=f"Captioned {done} of {total}"))
    finally:
        bar.empty()
    return {"id": uuid.uuid4().hex, "model": bundle.name, "results": results,
            "images": {name: preview_bytes(data) for name, data in items},
            "thumbs": {name: thumbnail_data_url(data) for name, data in items}}


def results_ui(batch: dict) -> None:
    st.subheader(f"Results ({batch['model']})")
    st.caption("Click a caption to edit it; the CSV holds your edits.")
    edited = st.data_editor(
        results_frame(batch["results"], batch["thumbs"]), key=f"editor-{batch['id']}", hide_index=True, placeholder="",
        disabled=["thumbnail", "image", "score", "error"],
        column_config={"thumbnail": st.column_config.ImageColumn("", width="small"),
                       "caption": st.column_config.TextColumn("caption", width="large"),
                       "score": st.column_config.NumberColumn("score", help="mean log-probability per word")})
    st.download_button("Download CSV", csv_bytes(apply_edits(batch["results"], edited)), file_name="captions.csv",
                       mime="text/csv", on_click="ignore", type="primary")


def detail_ui(batch: dict) -> None:
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
    right.markdown(f"**{r.caption}**")
    right.dataframe([{"alternative": c, "score": round(s, 3)} for c, s in r.alternatives], hide_index=True)
    if r.attention is not None and img is not None:
        st.markdown("Where the model looked for each word:")
        st.image([attention_overlay(img, a, size=160) for a in r.attention], caption=r.words, width=160)


def main() -> None:
    st.set_page_config(page_title="Caption images", page_icon=":frame_with_picture:", layout="wide")
    st.title("Caption images")
    st.markdown("Upload photos or a zip of photos and caption them all at once.  \n"
                "Edit any caption in the table, then download the results as CSV.")
    bundle, beam, max_len = options_ui()
    if bundle is None and not st.session_state.get("model"):
        st.warning("No model found in the models folder. Train one on the Train page first.")
    items = inputs_ui(bundle is not None)
    if items and (batch := caption_batch(bundle, items, beam, max_len)):
        st.session_state.batch = batch
    if "batch" in st.session_state:
        results_ui(st.session_state.batch)
        detail_ui(st.session_state.batch)


main()
