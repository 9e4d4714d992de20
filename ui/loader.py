"""The model list for the pages (loaded models themselves are kept by ui.warm, once per server)."""
from __future__ import annotations

from core.base.config import DECODER_SHORT_NAMES


def bundle_choices(models_dir) -> tuple[list, int]:
    """Every model bundle, and the index of the active one (0 when the active one is missing)."""
    from core.bundle.store import get_active, list_bundles

    bundles = list_bundles(models_dir)
    try:
        active = get_active(models_dir).resolve()
    except Exception:  # no active.json and no default: any bundle will do
        active = None
    index = next((i for i, b in enumerate(bundles) if active and b.path.resolve() == active), 0)
    return bundles, index


def decoder_label(config: dict) -> str:
    """A model's decoder in words, from its config.json: "attention decoder", "an ensemble of 3 attention decoders"."""
    name = DECODER_SHORT_NAMES.get(config.get("decoder"), "?")
    n = config.get("ensemble", 1)
    return f"an ensemble of {n} {name} decoders" if isinstance(n, int) and n > 1 else f"{name} decoder"
