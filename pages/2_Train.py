"""Train page: start a training run in the background, watch it live, stop and resume it, pick the model."""
from pathlib import Path

import pandas as pd
import streamlit as st

from core.base.config import ConfigError, TrainConfig, name_problem
from core.base.form_ranges import out_of_range
from core.base.paths import models_dir, runs_dir
from core.bundle.store import BundleError, inspect_bundle, set_active
from core.data.datasets import COCO_HELP, inspect_dataset
from core.evaluate.scores import (
    compare_models,
    dataset_outlook,
    format_metric,
    metric_label,
)
from core.runs.folder import LIVE, Job, list_runs, run_status
from core.runs.jobs import (
    JobError,
    current_job,
    enforce_stop,
    processes_of,
    resume_job,
    start_job,
    stop_job,
)
from ui.loader import bundle_choices
from ui.monitor import draw_run
from ui.nav import sidebar_menu
from ui.train_form import train_form

RUN_COLUMNS = ("epoch", "BLEU-4", "CIDEr", "distinct_captions")  # of a run's last (or final) metrics
STOP_GRACE_S = 120  # after a Stop, how long the trainer may take to checkpoint before it gets SIGTERM


def start(values: dict, confirmed: bool = False) -> bool:
    """Validate, then start the run (and redraw); False when the dataset is the problem. A dataset too small to
    learn captions from asks first (confirm_small_run), unless `confirmed`."""
    st.session_state.pop("small_run", None)  # a new submit replaces an unanswered question
    values = dict(values)
    processes = values.pop("processes", 1)
    if out_of_range(values):  # the inputs have no bounds of their own (core.base.form_ranges says why)
        st.error("These settings cannot start a run:\n" + "\n".join(f"- {p}" for p in out_of_range(values)))
        return True
    if processes > 1 and values["device"] not in ("auto", "cuda"):
        st.error(f"All {processes} GPUs need the device auto or cuda, not {values['device']}.")
        return True
    if not values["data"].strip():
        st.error("Choose the dataset folder first: the folder with the photos and their captions.")
        return False
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
    photos = round(info.splits.get(config.train_split, 0) * config.subset)
    outlook = dataset_outlook(photos, config.epochs)
    if outlook.level == "warning" and not confirmed:
        st.session_state["small_run"] = {"values": dict(values, processes=processes), "text": outlook.text}
        return True
    # a few missing images, train/val overlap, what to expect: shown above the monitor
    st.session_state["dataset_notes"] = info.notes + ([outlook.text] if outlook.text else [])
    try:
        start_job(config.to_dict(), runs_dir(), processes=processes)
    except JobError as e:
        st.error(str(e))
        return True
    st.rerun()


def confirm_small_run() -> None:
    """The question start() left: this dataset is too small to learn captions; start anyway?"""
    pending = st.session_state.get("small_run")
    if not pending:
        return
    st.warning(pending["text"])
    buttons = st.container(horizontal=True)
    if buttons.button("Start anyway", type="primary"):
        del st.session_state["small_run"]
        start(pending["values"], confirmed=True)
    if buttons.button("Change the settings"):
        del st.session_state["small_run"]
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


def use_allowed(bundle: str, run_name: str) -> bool:
    """The run's model beside the active one (figures measured the same way where possible); True when "Use this
    model" may apply, which for a model scoring lower than the active one takes a confirmation first."""
    bundles, i = bundle_choices(models_dir())
    active = bundles[i] if bundles and bundles[i].usable else None
    if active is None:
        return True
    if active.path.resolve() == Path(bundle).resolve():
        st.caption(f"This run's model ({active.name}) is the active model.")
        return True
    c = compare_models(inspect_bundle(Path(bundle)).metrics, active.metrics)
    if not c.rows:
        return True
    st.markdown(f"This run's model beside the active model ({c.basis}):")
    st.table(pd.DataFrame({"": [metric_label(n) for n, _, _ in c.rows],
                           "this run's model": [format_metric(n, v) for n, v, _ in c.rows],
                           f"active: {active.name}": [format_metric(n, v) for n, _, v in c.rows]}).set_index(""))
    if not c.worse:
        return True
    st.warning(f"This model scores lower than the active one ({active.name}): its captions would be worse.")
    return st.checkbox("Use it anyway, although it scores lower", key=f"use-worse-{run_name}")


def runs_ui(live: Job | None) -> None:
    runs = [r for r in list_runs(runs_dir()) if live is None or r.path != live.run_dir]  # the live one is above
    if not runs:
        return
    st.subheader("Earlier runs" if live else "Runs")
    st.dataframe(pd.DataFrame([{"run": r.name, "status": r.status, "model": r.config.get("model_name", ""),
                                **{"best epoch" if k == "epoch" else metric_label(k): format_metric(k, r.metrics.get(k))
                                   for k in RUN_COLUMNS}} for r in runs]), hide_index=True)
    # keyed by the newest run: when a run ends (or a new one appears) the choice moves to it, instead of Streamlit
    # keeping an older choice, after which "Use this model" would have applied to the older run's model
    run = {r.name: r for r in runs}[st.selectbox("Run", [r.name for r in runs], key=f"run-{runs[0].name}")]
    allowed = use_allowed(run.bundle, run.name) if run.bundle else False
    buttons = st.container(horizontal=True)
    if run.resumable and buttons.button("Resume", type="primary", help="Continue from the last checkpoint, "
                                        "with as many processes (GPUs) as it had"):
        try:
            resume_job(run.path, runs_dir())
            st.rerun()
        except JobError as e:
            st.error(str(e))
    if run.bundle and buttons.button("Use this model for captioning", type="primary", disabled=not allowed):
        try:
            set_active(Path(run.bundle).name, models_dir())
            st.success(f"{Path(run.bundle).name} is now the active model on the Caption page.")
        except BundleError as e:
            st.error(f"This model cannot be used: {e}")
    if run.status not in LIVE:
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
        confirm_small_run()
        with st.expander("How to get COCO-2017", expanded=not dataset_ok):
            st.markdown(COCO_HELP)


main()
