"""Training: `python -m core.train`. Imports torch."""
