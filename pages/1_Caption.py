"""Caption page: caption uploads (files, zips, a folder) or a folder on this computer; review, edit, download."""
import streamlit as st

from core.base.config import DecodeOptions
from core.base.paths import models_dir
from core.bundle.store import headline_metrics
from core.data.images import FORMAT_NAMES
from ui.inputs import UPLOAD_TYPES, read_uploads, sample_images
from ui.library_view import folder_flow
from ui.loader import bundle_choices, decoder_label
from ui.nav import sidebar_menu
from ui.review import (
    caption_uploads,
    offer_last_session,
    review_ui,
    session_id,
    uploads_batch,
)
from ui.tags import tag_threshold_ui

SAMPLES_NOTE = ("The samples are photos far from what this model learned from photos (Flickr8k: people, dogs, "
                "outdoor scenes), so expect some odd captions: they show what the object tags bring and how the "
                "**check** flag works.")


def options_ui():
    """The model and how to decode (beam width, maximum length, object words, tag threshold) from the sidebar;
    the model is None when there is none."""
    bundles, active = bundle_choices(models_dir())
    with st.sidebar:
        name = st.selectbox("Model", [b.name for b in bundles], index=active, key="model")
        bundle = next((b for b in bundles if b.name == name), None)
        if bundle is not None and not bundle.usable:  # a damaged model folder: the reason, not a traceback
            st.error(f"The model {bundle.name} cannot be used: {bundle.problem}")
            bundle = None
        elif bundle is not None:
            _, figures = headline_metrics(bundle.metrics)
            st.caption(" · ".join([decoder_label(bundle.config)] + [f"{k} {v:.1f}" for k, v in figures.items()]))
        d = DecodeOptions()
        beam = st.slider("Beam width", 1, 10, d.beam, help="1 = greedy; wider searches more sentences, slower")
        max_len = st.slider("Maximum length (words)", 5, 50, d.max_len)
        object_words = st.toggle("Object words", d.object_words, help="Name the object the image classifier is sure "
                                 "of (e.g. cat 0.96) in the caption. The tags column shows what it sees either way.")
        tag_threshold = tag_threshold_ui()
    return bundle, DecodeOptions(beam=beam, max_len=max_len, object_words=object_words, tag_threshold=tag_threshold)


def inputs_ui(can_caption: bool):
    """The images to caption now, as (name, bytes) items, or None when no button was pressed."""
    left, right = st.columns([3, 2])
    files = left.file_uploader(f"Images ({FORMAT_NAMES}) or zips of images", type=UPLOAD_TYPES,
                               accept_multiple_files=True)
    folder = right.file_uploader("Or a whole folder", type=UPLOAD_TYPES, accept_multiple_files="directory")
    files = (files or []) + (folder or [])
    buttons = st.container(horizontal=True)
    caption = buttons.button("Caption uploaded images", type="primary", disabled=not (files and can_caption))
    samples = buttons.button("Try sample images", disabled=not can_caption,
                             help="A cat, an astronaut, a man with a camera, a pagoda. " + SAMPLES_NOTE)
    buttons.caption(SAMPLES_NOTE)
    if caption:
        items, problems = read_uploads(files)
        for problem in problems:
            st.warning(problem)
        return items
    return sample_images() if samples else None


def main() -> None:
    st.set_page_config(page_title="Caption images", page_icon="🖼️", layout="wide")
    sidebar_menu()
    st.title("Caption images")
    st.markdown("Upload photos (or zips, or a folder) and caption them all at once, or caption a whole photo library "
                "on this computer.  \nReview and edit the captions, then download them, or write them beside the photos. "
                "Your tables and edits are kept on this computer: a reload brings them back.")
    bundle, options = options_ui()
    if bundle is None and not st.session_state.get("model"):
        st.warning("No model found in the models folder. Train one on the Train page first.")
    source = st.segmented_control("Images from", ["Uploads", "A folder on this computer"], default="Uploads",
                                  key="source") or "Uploads"
    sid = session_id()
    if source == "Uploads":
        items = inputs_ui(bundle is not None)
        if items:
            caption_uploads(bundle, items, options, sid=sid)
        batch = uploads_batch(sid)
        if batch is not None:
            review_ui(batch)
    else:
        folder_flow(bundle, options, sid=sid)
    offer_last_session(sid)  # last: a new tab's first look is the inputs


main()
