"""Drawing one training run's progress (live in the Train page's fragment, or after the fact).

It reads the run folder through core.runs only: no trainer, no torch in the web process for this.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core.runs import LIVE, format_eta, read_progress, run_status, summarize, tail_log

PHASES = {"starting": "starting up", "loading": "loading the dataset", "encoding": "encoding image features",
          "training": "training", "validating": "validating", "scst": "fine-tuning on CIDEr (SCST)",
          "saving": "saving the model", "done": "finished", "stopped": "stopped", "error": "failed"}
STATUS_WORDS = {"crashed": "The training process ended without saying why; the last log lines below may tell.",
                "stopping": "Stopping: the trainer saves a checkpoint, then exits.",
                "stopped": "Stopped. Resume continues from the last checkpoint."}


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
    cols[0].metric("Loss", f"{p.losses[-1]['loss']:.3f}" if p.losses else "—")
    cols[1].metric("Throughput", f"{p.images_per_s:.1f} img/s" if p.images_per_s else "—")
    last = p.epochs[-1] if p.epochs else {}
    for col, name in zip(cols[2:], ("BLEU-4", "CIDEr")):
        col.metric(f"{name} (last epoch)", f"{last[name]:.3f}" if isinstance(last.get(name), (int, float)) else "—")
    left, right = st.columns(2)
    if p.losses:
        left.line_chart(pd.DataFrame(p.losses), x="step", y="loss", height=220)
    metric_names = [k for k in ("BLEU-4", "CIDEr") if any(k in e for e in p.epochs)]
    if metric_names:
        right.line_chart(pd.DataFrame(p.epochs), x="epoch", y=metric_names, height=220)
    if p.samples:
        st.markdown("Sample captions on validation images:")
        for col, s in zip(st.columns(min(len(p.samples), 4)), p.samples[:4]):
            if Path(s.get("image", "")).is_file():
                col.image(s["image"], width=140)
            col.caption(f"**{s.get('caption', '')}**  \nreference: {(s.get('references') or [''])[0]}")
    with st.expander("Last log lines", expanded=status in ("error", "crashed")):
        st.code("\n".join(tail_log(run_dir, log_lines)) or "(no output yet)", language=None)
    return status
