"""Train page: start a training run in the background, watch it live, stop and resume it, pick the model."""
import re
from pathlib import Path

import pandas as pd
import streamlit as st

from core.bundle import BundleError, set_active
from core.data import COCO_HELP, inspect_dataset
from core.jobs import (REPO_ROOT, Job, JobError, cache_dir, current_job, enforce_stop, list_runs, models_dir,
                       resume_job, runs_dir, start_job, stop_job)
from ui.monitor import draw_run
from ui.nav import sidebar_menu

BACKBONES = ["efficientnet_lite0", "efficientnet_lite2", "resnet50", "resnet101"]
DECODERS = {"attention": "Show, Attend and Tell (attention)", "show_tell": "Show and Tell"}
STOP_GRACE_S = 120  # after a Stop, how long the trainer may take to checkpoint before it gets SIGTERM


def train_form() -> dict | None:
    """The run's settings as a TrainConfig dict when the form is submitted, else None."""
    with st.form("train"):
        data = st.text_input("Dataset folder (COCO-2017 or Flickr layout)", str(REPO_ROOT / "cocoapi"))
        c = st.columns(3)
        backbone = c[0].selectbox("Backbone", BACKBONES)
        decoder = c[1].selectbox("Decoder", list(DECODERS), format_func=DECODERS.get)
        device = c[2].selectbox("Device", ["auto", "cuda", "mps", "cpu"])
        c = st.columns(4)
        embed_dim = c[0].number_input("Embedding size", 8, 2048, 256, step=8)
        hidden_dim = c[1].number_input("Hidden size", 8, 4096, 512, step=8)
        min_word_count = c[2].number_input("Vocabulary threshold (min. word count)", 1, 100, 5)
        epochs = c[3].number_input("Epochs", 1, 200, 10)
        c = st.columns(4)
        batch_size = c[0].number_input("Batch size", 1, 1024, 64)
        lr = c[1].number_input("Learning rate", 1e-6, 1.0, 4e-4, step=1e-4, format="%.0e")
        subset = c[2].slider("Quick run: fraction of the data", 0.01, 1.0, 1.0, help="e.g. 0.05 for a first try")
        model_name = c[3].text_input("Model name", "", placeholder="letters, digits, - and _")
        if not st.form_submit_button("Start training", type="primary"):
            return None
    return dict(data=data, backbone=backbone, decoder=decoder, device=device, embed_dim=int(embed_dim),
                hidden_dim=int(hidden_dim), min_word_count=int(min_word_count), epochs=int(epochs),
                batch_size=int(batch_size), lr=float(lr), subset=float(subset), models_dir=str(models_dir()),
                cache_dir=str(cache_dir()),
                model_name=model_name.strip() or f"{decoder}-{backbone}-{pd.Timestamp.now():%Y%m%d-%H%M}")


def start(config: dict) -> bool:
    """Validate, then start the run (and redraw); False when the dataset is the problem."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,60}", config["model_name"]):
        st.error("The model name may hold only letters, digits, - and _ (at most 60).")
        return True
    info = inspect_dataset(config["data"])
    if not info.ok:
        st.error("This dataset cannot be used yet:\n" + "\n".join(f"- {p}" for p in info.problems))
        return False
    try:
        start_job(config, runs_dir())
    except JobError as e:
        st.error(str(e))
        return True
    st.rerun()


@st.fragment(run_every=2)
def monitor(run_dir: str) -> None:
    job = Job.load(run_dir)
    if job is None or not job.alive():
        st.rerun()  # the run is over: redraw the whole page (form and runs list)
    enforce_stop(job, STOP_GRACE_S)
    st.button("Stop", on_click=stop_job, args=(job,), disabled=job.stop_requested_at is not None,
              help="The trainer saves a checkpoint and exits; Resume continues from there")
    draw_run(Path(run_dir))


def runs_ui(live: Job | None) -> None:
    runs = [r for r in list_runs(runs_dir()) if live is None or r.path != live.run_dir]  # the live one is above
    if not runs:
        return
    st.subheader("Earlier runs" if live else "Runs")
    st.dataframe(pd.DataFrame([{"run": r.name, "status": r.status, "model": r.config.get("model_name", ""),
                                **{("best epoch" if k == "epoch" else k): round(v, 3) for k, v in r.metrics.items()
                                   if isinstance(v, (int, float))}}
                               for r in runs]), hide_index=True)
    run = {r.name: r for r in runs}[st.selectbox("Run", [r.name for r in runs])]
    buttons = st.container(horizontal=True)
    if run.resumable and buttons.button("Resume", type="primary", help="Continue from the last checkpoint"):
        try:
            resume_job(run.path, runs_dir())
            st.rerun()
        except JobError as e:
            st.error(str(e))
    if run.bundle and buttons.button("Use this model for captioning", type="primary"):
        try:
            set_active(Path(run.bundle).name, models_dir())
            st.success(f"{Path(run.bundle).name} is now the active model on the Caption page.")
        except BundleError as e:
            st.error(f"This model cannot be used: {e}")
    if run.status not in ("running", "starting", "stopping"):
        with st.expander("Details of this run", expanded=live is None):
            draw_run(run.path)


def main() -> None:
    st.set_page_config(page_title="Train a model", page_icon=":frame_with_picture:", layout="wide")
    sidebar_menu()
    st.title("Train a model")
    st.markdown("Train a captioning model on COCO-2017 or a Flickr-style folder, in the background.  \n"
                "The run goes on when you close this tab; come back to watch it, stop it or resume it.")
    job = current_job(runs_dir())
    if job is not None:
        monitor(str(job.run_dir))
    runs_ui(job)
    if job is None:
        st.subheader("New run")
        config = train_form()
        dataset_ok = start(config) if config is not None else True
        with st.expander("How to get COCO-2017", expanded=not dataset_ok):
            st.markdown(COCO_HELP)


main()
