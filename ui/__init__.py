"""Helpers for the Streamlit pages: inputs, pictures, result tables and the cached model loader.

Only `ui.loader` imports Streamlit; the rest are plain functions, unit-tested in tests/test_ui.py.
"""
