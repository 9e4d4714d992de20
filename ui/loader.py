"""Cached loaders: the model is loaded once per (bundle, device), not on every rerun."""
from __future__ import annotations

import streamlit as st


@st.cache_resource(show_spinner="Loading the model...", max_entries=2)
def get_captioner(bundle_path: str, device: str = "auto", version: float = 0.0):
    """`version` (the weights file's mtime) makes a bundle retrained in place load afresh."""
    from core.caption import Captioner  # torch is imported here, not when the Home page imports this module

    return Captioner(bundle_path, device=device)


@st.cache_resource
def device_info() -> dict:
    from core.device import describe_device

    return describe_device()


def bundle_choices(models_dir) -> tuple[list, int]:
    """Every model bundle, and the index of the active one (0 when the active one is missing)."""
    from core.bundle import get_active, list_bundles

    bundles = list_bundles(models_dir)
    try:
        active = get_active(models_dir).resolve()
    except Exception:  # no active.json and no default: any bundle will do
        active = None
    index = next((i for i, b in enumerate(bundles) if active and b.path.resolve() == active), 0)
    return bundles, index
