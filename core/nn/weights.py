"""A model bundle's weights in and out of a CaptionModel: `save_bundle` writes model.safetensors + config.json +
vocab.json (+ metrics.json, card.md); `load_bundle` checks the folder (core.bundle.store) and builds the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.base.config import ModelConfig
from core.base.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from core.bundle.store import (
    FORMAT,
    BundleError,
    check_shapes,
    read_config,
    read_metrics,
    read_vocab,
    weight_shapes,
)
from core.data.vocabulary import Vocabulary

if TYPE_CHECKING:  # torch is imported only by the functions that build or save a model: listing stays light
    import torch

    from core.nn.model import CaptionModel


@dataclass
class Bundle:
    model: CaptionModel
    vocab: Vocabulary
    config: ModelConfig
    metrics: dict
    path: Path


def save_bundle(folder: Path, model: CaptionModel, vocab: Vocabulary, metrics: dict | None = None,
                card: str = "", half: bool = False) -> Path:
    """Write a bundle; each file atomically, weights last-but-one so a reader never pairs new JSON with old weights."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu()
               for k, v in model.trainable_state_dict().items()}
    atomic_write_json(folder / "config.json", {"format": FORMAT, **model.cfg.to_dict()})
    atomic_write_json(folder / "vocab.json", vocab.to_json())
    atomic_write_bytes(folder / "model.safetensors", save(tensors, metadata={"format": FORMAT}))
    atomic_write_json(folder / "metrics.json", metrics or {})
    atomic_write_text(folder / "card.md", card)
    return folder


def load_bundle(folder: Path, device: str | torch.device = "cpu", pretrained: bool = True) -> Bundle:
    """Check every part (config ranges, vocabulary, the weights' header against the config) before building the
    model, then load. Any problem is a BundleError in plain words."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from core.nn.model import CaptionModel

    folder = Path(folder)
    cfg = read_config(folder)
    vocab = read_vocab(folder, cfg)
    check_shapes(folder, cfg, weight_shapes(folder))
    try:
        weights = load_file(folder / "model.safetensors")
    except (SafetensorError, OSError) as e:
        raise BundleError(f"{folder}/model.safetensors cannot be read ({e})") from None
    # the frozen backbone's weights come from its own package, not from the bundle
    model = CaptionModel(cfg, with_encoder=True, pretrained=pretrained and not cfg.fine_tune)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, strict=False)
    model.to(device).eval()
    return Bundle(model, vocab, cfg, read_metrics(folder)[0], folder)
