"""Scoring captions: metrics, figures in words for the pages, `python -m core.evaluate`. Torch-free at import."""
