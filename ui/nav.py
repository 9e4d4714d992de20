"""The sidebar menu (Home, Caption, Train), drawn by every page; Streamlit's own list is off (.streamlit/config.toml)."""
from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

PAGES = [("app.py", "Home", ":material/home:"), ("pages/1_Caption.py", "Caption", ":material/photo_library:"),
         ("pages/2_Train.py", "Train", ":material/model_training:")]


def sidebar_menu(warm_up: bool = True) -> None:
    """The menu, and the model warm-up (idempotent), which every page starts so that any first page benefits.

    Home starts the warm-up itself, once its first part is drawn, so that starting it does not delay that part."""
    if warm_up:
        from ui import warm

        warm.start()
    with st.sidebar:
        try:
            for page, label, icon in PAGES:
                st.page_link(page, label=label, icon=icon)
        except StreamlitPageNotFoundError:  # a page run on its own (`streamlit run pages/...`): no app to link to
            return
        st.divider()
