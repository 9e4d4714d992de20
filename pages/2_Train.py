"""Train page: start a training run in the background, watch it live, stop and resume it, pick the model."""
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from core.bundle import BundleError, set_active
from core.config import (ADVANCED_OPTIONS, BACKBONE_NAMES, DECODER_NAMES, DECODERS, DEVICES, NAME_RULE, ConfigError,
                         ModelConfig, TrainConfig, name_problem)
from core.data import COCO_HELP, inspect_dataset
from core.jobs import JobError, current_job, enforce_stop, processes_of, resume_job, start_job, stop_job
from core.paths import models_dir, runs_dir
from core.runs import Job, list_runs, run_status
from ui import warm
from ui.device import device_report_ui
from ui.monitor import draw_run
from ui.nav import sidebar_menu

STOP_GRACE_S = 120  # after a Stop, how long the trainer may take to checkpoint before it gets SIGTERM


def device_choice(where) -> tuple[str, int]:
    """The compute device for the run, with what was found on this computer beside it; and how many processes:
    with several CUDA GPUs, one or all of them (one process each, through torchrun)."""
    device = where.selectbox("Device", DEVICES, help="auto: CUDA, then Apple MPS, then the CPU")
    dev = warm.device_info()  # the server's warm-up made one already, unless this is its very first page
    report = device_report_ui(where, report=dev if dev and "error" not in dev else None)
    if report.gpus < 2 or os.name == "nt":  # PyTorch's Windows builds have no NCCL, which several GPUs train over
        return device, 1
    processes = where.selectbox("GPUs", (1, report.gpus),
                                format_func=lambda n: "one GPU" if n == 1 else f"all {n} GPUs",
                                help="All: one training process per GPU (torchrun, DistributedDataParallel); "
                                "the batch size is the total over all of them")
    return device, processes


def registry_options(d: TrainConfig, m: ModelConfig) -> dict:
    """The options listed in core.config.ADVANCED_OPTIONS, four a row, each drawn by the type of its default."""
    out, cols = {}, st.columns(4)
    for k, (name, label, help_, limits) in enumerate(ADVANCED_OPTIONS):
        default, where = getattr(m, name) if hasattr(m, name) else getattr(d, name), cols[k % 4]
        if isinstance(default, bool):
            out[name] = bool(where.checkbox(label, default, help=help_))
        elif isinstance(default, int):
            out[name] = int(where.number_input(label, limits[0], limits[1], default, help=help_))
        elif isinstance(default, float):
            out[name] = float(where.number_input(label, limits[0], limits[1], default, help=help_))
        else:
            out[name] = where.text_input(label, default, help=help_).strip()
    return out


def train_form() -> dict | None:
    """The run's settings (TrainConfig fields, defaults from TrainConfig) when the form is submitted, else None."""
    d, m = TrainConfig(), ModelConfig()
    with st.form("train"):
        data = st.text_input("Dataset folder (COCO-2017 or Flickr layout)", d.data)
        c = st.columns(3)
        backbone = c[0].selectbox("Backbone", BACKBONE_NAMES, index=BACKBONE_NAMES.index(m.backbone))
        decoder = c[1].selectbox("Decoder", DECODERS, index=DECODERS.index(m.decoder), format_func=DECODER_NAMES.get)
        device, processes = device_choice(c[2])
        c = st.columns(4)
        embed_dim = c[0].number_input("Embedding size", 8, 2048, m.embed_dim, step=8)
        hidden_dim = c[1].number_input("Hidden size", 8, 4096, m.hidden_dim, step=8)
        min_word_count = c[2].number_input("Vocabulary threshold (min. word count)", 1, 100, d.min_word_count)
        epochs = c[3].number_input("Epochs", 1, 200, d.epochs)
        c = st.columns(4)
        batch_size = c[0].number_input("Batch size", 1, 1024, d.batch_size)
        lr = c[1].number_input("Learning rate", 1e-6, 1.0, d.lr, step=1e-4, format="%.0e")
        subset = c[2].slider("Quick run: fraction of the data", 0.01, 1.0, d.subset, help="e.g. 0.05 for a first try")
        model_name = c[3].text_input("Model name", "", placeholder=NAME_RULE)
        with st.expander("Advanced"):
            c = st.columns(4)
            label_smoothing = c[0].number_input("Label smoothing", 0.0, 0.5, d.label_smoothing, step=0.05)
            scst_epochs = c[1].number_input("SCST passes over the data (CIDEr reward, after the others)", 0, 50,
                                            d.scst_epochs)
            val_images = c[2].number_input("Validation images", 1, 100_000, d.val_images)
            fine_tune = c[3].checkbox("Fine-tune the backbone too", m.fine_tune, help="No feature cache; needs a GPU")
            c = st.columns(4)
            checkpoint_every = c[0].number_input("Checkpoint every (steps)", 1, 1_000_000, d.checkpoint_every)
            checkpoint_minutes = c[1].number_input("... or every (minutes)", 0.5, 1440.0, d.checkpoint_minutes)
            attention_dim = c[2].number_input("Attention size", 8, 2048, m.attention_dim, step=8)
            dropout = c[3].number_input("Dropout", 0.0, 0.9, m.dropout, step=0.05)
            extra = registry_options(d, m)
            allow_missing = st.checkbox("Train even when more than 1% of a split's images are missing",
                                        d.allow_missing, help="e.g. on a COCO folder whose unzip is not finished")
        if not st.form_submit_button("Start training", type="primary"):
            return None
    return dict(data=data, backbone=backbone, decoder=decoder, device=device, processes=int(processes),
                embed_dim=int(embed_dim),
                hidden_dim=int(hidden_dim), min_word_count=int(min_word_count), epochs=int(epochs),
                batch_size=int(batch_size), lr=float(lr), subset=float(subset), label_smoothing=float(label_smoothing),
                scst_epochs=int(scst_epochs), val_images=int(val_images), fine_tune=bool(fine_tune),
                checkpoint_every=int(checkpoint_every), checkpoint_minutes=float(checkpoint_minutes),
                attention_dim=int(attention_dim), dropout=float(dropout), allow_missing=bool(allow_missing), **extra,
                model_name=model_name.strip() or f"{decoder}-{backbone}-{pd.Timestamp.now():%Y%m%d-%H%M}")


def start(values: dict) -> bool:
    """Validate, then start the run (and redraw); False when the dataset is the problem."""
    processes = values.pop("processes", 1)
    if processes > 1 and values["device"] not in ("auto", "cuda"):
        st.error(f"All {processes} GPUs need the device auto or cuda, not {values['device']}.")
        return True
    if name_problem(values["model_name"]):
        st.error(name_problem(values["model_name"]))
        return True
    try:
        config = TrainConfig.from_dict(values).resolved()  # ~ and relative folders, as the trainer sees them
    except ConfigError as e:
        st.error(f"These settings cannot start a run: {e}")
        return True
    if config.problems():
        st.error("These settings cannot start a run:\n" + "\n".join(f"- {p}" for p in config.problems()))
        return True
    info = inspect_dataset(config.data, (config.train_split, config.val_split), config.allow_missing)
    if not info.ok:
        st.error("This dataset cannot be used yet:\n" + "\n".join(f"- {p}" for p in info.problems))
        return False
    st.session_state["dataset_notes"] = info.notes  # a few missing images, train/val overlap: shown above the monitor
    try:
        start_job(config.to_dict(), runs_dir(), processes=processes)
    except JobError as e:
        st.error(str(e))
        return True
    st.rerun()


def live_job() -> Job | None:
    """The job to watch. One that has written its last word (done, error) is over for the page while its process
    exits: the page then shows it in the runs list, where "Use this model" must apply to it, not to an older run."""
    job = current_job(runs_dir())
    return job if job is not None and run_status(job.run_dir) not in ("done", "error") else None


@st.fragment(run_every=2)
def monitor(run_dir: str) -> None:
    live = live_job()
    if live is None or live.run_dir != Path(run_dir):
        st.rerun()  # the run is over: redraw the whole page (form and runs list)
    if not enforce_stop(live, STOP_GRACE_S) and live.stop_requested_at and not live.alive():
        st.warning(f"The training process (pid {live.pid}) could not be identified for sure, so it is not "
                   "signalled; it stops at its next step, or end it yourself.")
    if processes_of(live.command) > 1:
        st.caption(f"On {processes_of(live.command)} GPUs: one process each (torchrun)")
    st.button("Stop", on_click=stop_job, args=(live,), disabled=live.stop_requested_at is not None,
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
    # keyed by the newest run: when a run ends (or a new one appears) the choice moves to it, instead of Streamlit
    # keeping an older choice, after which "Use this model" would have applied to the older run's model
    run = {r.name: r for r in runs}[st.selectbox("Run", [r.name for r in runs], key=f"run-{runs[0].name}")]
    buttons = st.container(horizontal=True)
    if run.resumable and buttons.button("Resume", type="primary", help="Continue from the last checkpoint, "
                                        "with as many processes (GPUs) as it had"):
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
    st.set_page_config(page_title="Train a model", page_icon="🖼️", layout="wide")
    sidebar_menu()
    st.title("Train a model")
    st.markdown("Train a captioning model on COCO-2017 or a Flickr-style folder, in the background.  \n"
                "The run goes on when you close this tab; come back to watch it, stop it or resume it.")
    job = live_job()
    if job is not None:
        for note in st.session_state.get("dataset_notes", []):
            st.warning(f"Dataset: {note}")
        monitor(str(job.run_dir))
    runs_ui(job)
    if job is None:
        st.subheader("New run")
        config = train_form()
        dataset_ok = start(config) if config is not None else True
        with st.expander("How to get COCO-2017", expanded=not dataset_ok):
            st.markdown(COCO_HELP)


main()
