"""Home page: what the app does, the active model, the compute device and the dataset; links to the pages.

It draws from JSON files only and never imports torch, so it appears at once; the compute device is filled in
by the background warm-up (ui.warm), which also loads the active model for the Caption page.
"""
import streamlit as st

from core.base.paths import COCO_DIR, models_dir
from core.data.datasets import inspect_dataset
from core.evaluate.scores import (
    METRIC_HELP,
    demote_headings,
    format_metric,
    model_summary,
)
from ui import warm
from ui.device import device_report_ui
from ui.loader import bundle_choices, decoder_label
from ui.nav import sidebar_menu


@st.cache_data(ttl=600, show_spinner="Looking for a dataset in cocoapi/...")
def coco_status() -> tuple[bool, str]:
    info = inspect_dataset(COCO_DIR)
    if info.ok:
        return True, ", ".join(f"{split}: {n:,} images" for split, n in info.splits.items())
    return False, "; ".join(info.problems)


def model_section() -> None:
    st.subheader("Active model")
    bundles, active = bundle_choices(models_dir())
    if not bundles:
        st.warning("No model yet. Train one on the Train page (or copy a model folder into `models/`).")
        return
    b = bundles[active]
    if not b.usable:  # a damaged model folder: say why instead of failing the page
        st.error(f"The model **{b.name}** cannot be used: {b.problem}")
        return
    st.markdown(f"**{b.name}** — {b.config.get('backbone', '?')} encoder, {decoder_label(b.config)}")
    summary_ui(b)


def summary_ui(b) -> None:
    """What the model is good and bad at, and how good its captions are, in plain words (core.evaluate.scores reads its
    metrics.json and card); the two main figures, each explained in a line; the full card one click further."""
    s = model_summary(b.metrics, b.card)
    st.markdown(f"**How good its captions are: {s.quality}.** {s.how_good}  \n"
                f"**Good at:** {s.good_at}  \n**Bad at:** {s.bad_at}")
    figures = {k: v for k, v in s.figures.items() if k in ("BLEU-4", "CIDEr")}
    if figures:
        for col, (name, value) in zip(st.columns(len(figures) + 2), figures.items()):
            col.metric(name, format_metric(name, value), help=METRIC_HELP[name])
        st.caption("  \n".join([METRIC_HELP[n] for n in figures] + [f"Scores from {s.source}."]))
    # on request: the card (13 KB of tables for the default model) is rendered by the browser even inside a collapsed
    # expander, and that made Home appear about a second later (bench/bench_first_impression.py)
    if b.card and st.toggle("Show the full model card", key="show-card", help="How it was trained, its scores by "
                            "dataset, what was tried"):
        st.markdown(demote_headings(b.card, below=3))  # its headings smaller than the page's own


def device_line() -> None:
    """The compute device, once the warm-up has looked (a second or two after the server's first page)."""
    dev = warm.device_info()
    if dev is None:
        wait_for_device()
    elif "error" in dev:
        st.markdown(f"Compute device: unknown ({dev['error']})")
    else:
        device_report_ui(report=dev)


@st.fragment(run_every=0.5)
def wait_for_device() -> None:
    if warm.device_info() is not None:
        st.rerun()  # the whole page, once: it then draws the device without this poll
    st.markdown("Compute device: *looking...*")


def main() -> None:
    # the emoji itself: Streamlit 1.67 passes a shortcode through as a URL, which the browser then fetches (the
    # server answers with its index.html: no icon, and one more request competing with the first page)
    st.set_page_config(page_title="Image captioning", page_icon="🖼️", layout="wide")
    sidebar_menu(warm_up=False)
    st.title("Image captioning")
    st.markdown(
        "Describe photos in a sentence: a CNN reads the picture, a Transformer decoder (in the default model) "
        "writes the caption.  \n"
        "Caption your own images or a whole photo library, or train a new model on COCO-2017 or a Flickr-style dataset."
    )
    st.subheader("Pages")
    st.page_link("pages/1_Caption.py", label="Caption images: uploads or a folder of photos; review, edit, download",
                 icon=":material/photo_library:")
    st.page_link("pages/2_Train.py", label="Train a model: start, watch, stop and resume a training run",
                 icon=":material/model_training:")
    model_section()
    st.subheader("This computer")
    warm.start()  # after the page's first part is on its way (ui.serve has started it already; a bare `streamlit run` has not)
    device_line()
    found, detail = coco_status()
    if found:
        st.markdown(f"Dataset in `cocoapi/`: **COCO-2017 found** ({detail})")
    else:
        st.markdown("Dataset in `cocoapi/`: **none yet**. Train on another folder, or see the Train page for "
                    "how to get COCO-2017.")
        st.caption(detail)
    warm.preload_pages()  # the other pages' modules, now that Home is drawn


main()
