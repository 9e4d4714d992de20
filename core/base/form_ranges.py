"""The Train form's ranges: a value outside them is refused with a message naming the field, never clamped.

Why not the widgets' own min/max: Streamlit's number input does not send a typed value outside its bounds, so the
run silently started with the previous value (the default) instead of the one the person typed. The page draws its
inputs without bounds and calls `out_of_range` before it starts anything.
"""
from __future__ import annotations

# field: (the form's label, lowest, highest)
FORM_RANGES = {
    "embed_dim": ("Embedding size", 8, 2048),
    "hidden_dim": ("Hidden size", 8, 4096),
    "min_word_count": ("Vocabulary threshold (min. word count)", 1, 100),
    "epochs": ("Epochs", 1, 200),
    "batch_size": ("Batch size", 1, 1024),
    "lr": ("Learning rate", 1e-6, 1.0),
    "label_smoothing": ("Label smoothing", 0.0, 0.5),
    "scst_epochs": ("SCST passes over the data", 0, 50),
    "val_images": ("Validation images", 1, 100_000),
    "checkpoint_every": ("Checkpoint every (steps)", 1, 1_000_000),
    "checkpoint_minutes": ("Checkpoint every (minutes)", 0.5, 1440.0),
    "attention_dim": ("Attention size", 8, 2048),
    "dropout": ("Dropout", 0.0, 0.9),
}


def _ranges() -> dict:
    """FORM_RANGES and the limits of core.base.config's ADVANCED_OPTIONS (the decoder, augmentation and fine-tuning ones)."""
    from core.base.config import ADVANCED_OPTIONS

    return {**FORM_RANGES, **{name: (label, *limits) for name, label, _, limits in ADVANCED_OPTIONS if limits}}


def out_of_range(values: dict) -> list[str]:
    """A plain-words line for each form value outside FORM_RANGES (or not a number); [] when all fit."""
    problems = []
    for name, (label, lo, hi) in _ranges().items():
        if name not in values:
            continue
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN
            problems.append(f"{label} must be a number from {lo:g} to {hi:g} (it is {value!r}).")
        elif not lo <= value <= hi:
            problems.append(f"{label} must be from {lo:g} to {hi:g} (it is {value:g}).")
    return problems
