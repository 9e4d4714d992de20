"""Drawing one training run's progress (live in the Train page's fragment, or after the fact).

It reads the run folder through core.runs.folder only: no trainer, no torch in the web process for this.
"""
from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from core.evaluate.scores import format_metric
from core.runs.folder import (
    LIVE,
    format_eta,
    read_progress,
    run_status,
    summarize,
    tail_log,
)

CHART_METRICS = ("BLEU-4", "CIDEr")  # the per-epoch scores drawn (x100); the rest are in the runs table

PHASES = {"starting": "starting up", "loading": "loading the dataset", "encoding": "encoding image features",
          "training": "training", "validating": "validating", "scst": "fine-tuning on CIDEr (SCST)",
          "saving": "saving the model", "done": "finished", "stopped": "stopped", "error": "failed"}
STATUS_WORDS = {"crashed": "The training process ended without saying why; the last log lines below may tell.",
                "stopping": "Stopping: the trainer saves a checkpoint, then exits.",
                "stopped": "Stopped. Resume continues from the last checkpoint."}


def chart(frame: pd.DataFrame, x: str, ys: list[str], x_title: str, y_format: str) -> alt.Chart:
    """Lines with a dot per point, whole numbers along x: one epoch is one dot at "1", not an axis of
    "0.000000 / 1.000000" (st.line_chart's, with a single point)."""
    long = frame.melt(id_vars=[x], value_vars=ys, var_name="score", value_name="value").dropna()
    last = max(int(long[x].max()), 1) if len(long) else 1
    return alt.Chart(long, height=220).mark_line(point=True).encode(
        x=alt.X(f"{x}:Q", title=x_title, scale=alt.Scale(domain=[0, last]),
                axis=alt.Axis(format="d", tickMinStep=1)),
        y=alt.Y("value:Q", title=None, axis=alt.Axis(format=y_format)),
        color=alt.Color("score:N", title=None, legend=alt.Legend(orient="bottom")),
        tooltip=[alt.Tooltip(f"{x}:Q", title=x_title, format="d"), alt.Tooltip("score:N"),
                 alt.Tooltip("value:Q", format=y_format)])


def draw_run(run_dir: Path, log_lines: int = 12) -> str:
    """Phase, progress bar, charts, samples and log of a run; returns its status."""
    events = read_progress(run_dir)
    status, p = run_status(run_dir, events), summarize(events)
    now = f"{status}: {PHASES.get(p.phase, p.phase)}" if status in LIVE else PHASES.get(status, status)
    st.markdown(f"**{run_dir.name}** — {now}")
    if status in LIVE:
        st.progress(p.fraction, text=f"{p.label or PHASES.get(p.phase, p.phase)} · ETA {format_eta(p.eta_s)}")
    elif p.label and status != "done":
        st.caption(f"Got as far as {p.label}.")
    if status in STATUS_WORDS:
        st.info(STATUS_WORDS[status])
    if status == "done" and p.final and p.final.get("bundle"):
        st.success(f"Finished. The model is saved as {Path(p.final['bundle']).name} ({p.final['bundle']}).")
    if p.error:
        st.error(f"Training failed: {p.error}")
    cols = st.columns(4)
    cols[0].metric("Loss", format_metric("loss", p.losses[-1]["loss"]) if p.losses else "—")
    cols[1].metric("Throughput", f"{p.images_per_s:.1f} img/s" if p.images_per_s else "—")
    last = p.epochs[-1] if p.epochs else {}
    for col, name in zip(cols[2:], CHART_METRICS):
        col.metric(f"{name} (last epoch)", format_metric(name, last.get(name)))
    left, right = st.columns(2)
    if p.losses:
        left.altair_chart(chart(pd.DataFrame(p.losses), "step", ["loss"], "training step", ".2f"))
    metric_names = [k for k in CHART_METRICS if any(k in e for e in p.epochs)]
    if metric_names:
        right.altair_chart(chart(pd.DataFrame(p.epochs), "epoch", metric_names, "epoch", ".1f"))
    if p.samples:
        st.markdown("Sample captions on validation images:")
        for col, s in zip(st.columns(min(len(p.samples), 4)), p.samples[:4]):
            if Path(s.get("image", "")).is_file():
                col.image(s["image"], width=140)
            col.caption(f"**{s.get('caption', '')}**  \nreference: {(s.get('references') or [''])[0]}")
    with st.expander("Last log lines", expanded=status in ("error", "crashed")):
        st.code("\n".join(tail_log(run_dir, log_lines)) or "(no output yet)", language=None)
    return status
