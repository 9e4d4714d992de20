"""Helpers for the Streamlit pages: inputs, pictures, result tables, the model list and the background warm-up.

`ui.device`, `ui.library_view`, `ui.monitor`, `ui.nav` and `ui.review` draw widgets; the others (`inputs`,
`images`, `results`, `loader`, `warm`) are plain functions, unit-tested without a page.
"""
