"""The compute-device report (core.device.report), drawn on the Home page and beside the Train page's device choice."""
from __future__ import annotations

from dataclasses import asdict

import streamlit as st

from core.device.report import DeviceReport, device_report_subprocess


@st.cache_data(show_spinner="Checking the compute device...")
def _report() -> dict:
    # A subprocess, so that drawing this never loads torch (or CUDA) into the server; once per server start,
    # which is also when a new driver or PyTorch build takes effect.
    return asdict(device_report_subprocess())


def device_report_ui(column=None, report: dict | None = None) -> DeviceReport:
    """The device "auto" uses, in `column` (default: the page); why an NVIDIA GPU goes unused and the fix, full width.

    `report`: one already made (the server's warm-up makes one in the background); else one is made here.
    """
    report = DeviceReport(**(report or _report()))
    if column is None:
        st.markdown(f"Compute device: **{report.label()}** · PyTorch {report.torch}")
        if report.nvidia:
            st.caption(f"NVIDIA GPU found by nvidia-smi: {report.nvidia}")
    else:
        column.caption(f"auto = {report.label()}")
    if report.problem:
        st.warning(f"**The GPU is not used.** {report.problem}" if report.nvidia else report.problem)
        if report.fix:
            st.markdown(report.fix)
        if report.command:
            st.code(report.command, language=None, wrap_lines=True)
    return report
