"""Model bundles: a folder with model.safetensors + config.json + vocab.json + metrics.json + card.md.

No pickle: weights are safetensors, everything else JSON or Markdown. Loading checks that the parts fit
together and refuses pickled files, which can run arbitrary code when loaded.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .backbones import BACKBONES
from .config import DECODERS, ModelConfig
from .files import atomic_write_bytes, atomic_write_json, atomic_write_text
from .model import CaptionModel
from .paths import models_dir
from .vocabulary import Vocabulary

FORMAT = "caption-bundle/1"
MODELS_DIR = models_dir()
DEFAULT_MODEL = MODELS_DIR / "default"
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}


class BundleError(ValueError):
    """A model folder that cannot be used; the message says why in plain words."""


@dataclass
class Bundle:
    model: CaptionModel
    vocab: Vocabulary
    config: ModelConfig
    metrics: dict
    path: Path


@dataclass
class BundleInfo:
    name: str
    path: Path
    config: dict
    metrics: dict = field(default_factory=dict)
    card: str = ""


def save_bundle(folder: Path, model: CaptionModel, vocab: Vocabulary, metrics: dict | None = None,
                card: str = "", half: bool = False) -> Path:
    """Write a bundle; each file atomically, weights last-but-one so a reader never pairs new JSON with old weights."""
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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path.name} is missing in {path.parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e})") from None


def _check_not_pickle(weights: Path) -> None:
    head = weights.read_bytes()[:8] if weights.exists() else b""
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch.save zip / raw pickle protocol >= 2
        raise BundleError(f"{weights} is a pickle (torch.save) file, not safetensors; pickles can run code when "
                          "loaded, so they are refused. Convert it to safetensors with the code that made it.")


def read_config(folder: Path) -> ModelConfig:
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"no model folder at {folder}")
    weights = folder / "model.safetensors"
    if not weights.exists():
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickled:
            raise BundleError(f"{folder} holds only pickled weights ({', '.join(pickled)}); they are refused because "
                              "loading a pickle can run code. A model folder needs model.safetensors.")
        raise BundleError(f"model.safetensors is missing in {folder}")
    _check_not_pickle(weights)
    raw = _read_json(folder / "config.json")
    if raw.get("format") != FORMAT:
        raise BundleError(f"{folder}/config.json is format {raw.get('format')!r}; this version reads {FORMAT!r}")
    if raw.get("backbone") not in BACKBONES:
        raise BundleError(f"{folder} needs backbone {raw.get('backbone')!r}, which this version does not have")
    if raw.get("decoder") not in DECODERS:
        raise BundleError(f"{folder} has decoder type {raw.get('decoder')!r}; known: {', '.join(DECODERS)}")
    return ModelConfig.from_dict(raw)


def load_bundle(folder: Path, device: str | torch.device = "cpu", pretrained: bool = True) -> Bundle:
    folder = Path(folder)
    cfg = read_config(folder)
    vocab = Vocabulary.from_json(_read_json(folder / "vocab.json"))
    if len(vocab) != cfg.vocab_size:
        raise BundleError(f"{folder}: vocab.json has {len(vocab)} words but the model was built for {cfg.vocab_size}")
    try:
        weights = load_file(folder / "model.safetensors")
    except (SafetensorError, OSError) as e:
        raise BundleError(f"{folder}/model.safetensors cannot be read ({e})") from None
    # the frozen backbone's weights come from its own package, not from the bundle
    model = CaptionModel(cfg, with_encoder=True, pretrained=pretrained and not cfg.fine_tune)
    expected = model.trainable_state_dict()
    missing, unexpected = set(expected) - set(weights), set(weights) - set(expected)
    if missing or unexpected:
        raise BundleError(f"{folder}: the weights do not fit the config (missing {sorted(missing)[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]})")
    for k, v in weights.items():
        if v.shape != expected[k].shape:
            raise BundleError(f"{folder}: weight {k} has shape {tuple(v.shape)}, the config needs {tuple(expected[k].shape)}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, strict=False)
    model.to(device).eval()
    metrics = _read_json(folder / "metrics.json") if (folder / "metrics.json").exists() else {}
    return Bundle(model, vocab, cfg, metrics, folder)


def update_metrics(folder: Path, new: dict) -> dict:
    path = Path(folder) / "metrics.json"
    metrics = _read_json(path) if path.exists() else {}
    metrics.update(new)
    atomic_write_json(path, metrics)
    return metrics


def list_bundles(models_dir: Path | None = None) -> list[BundleInfo]:
    models_dir = Path(models_dir or MODELS_DIR)
    found = []
    for folder in sorted(p for p in models_dir.glob("*") if p.is_dir()):
        try:
            cfg = read_config(folder)
        except BundleError:
            continue
        metrics = _read_json(folder / "metrics.json") if (folder / "metrics.json").exists() else {}
        card = (folder / "card.md").read_text() if (folder / "card.md").exists() else ""
        found.append(BundleInfo(folder.name, folder, cfg.to_dict(), metrics, card))
    found.sort(key=lambda b: (b.name != "default", b.name))  # the shipped model first
    return found


def get_active(models_dir: Path | None = None) -> Path:
    """The bundle the Caption page starts with: chosen with set_active, else models/default."""
    models_dir = Path(models_dir or MODELS_DIR)
    try:
        name = json.loads((models_dir / "active.json").read_text())["name"]
        if (models_dir / name / "model.safetensors").exists():
            return models_dir / name
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return models_dir / "default"


def set_active(name: str, models_dir: Path | None = None) -> None:
    models_dir = Path(models_dir or MODELS_DIR)
    if Path(name).name != name or not (models_dir / name / "model.safetensors").exists():
        raise BundleError(f"there is no model called {name!r} in {models_dir}")
    atomic_write_json(models_dir / "active.json", {"name": name})


def new_bundle_dir(name: str, models_dir: Path | None = None) -> Path:
    """A folder for a new model that never overwrites an existing one ("mymodel", "mymodel-2", ...)."""
    models_dir = Path(models_dir or MODELS_DIR)
    base = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name).strip(".-") or "model"
    candidate, n = models_dir / base, 2
    while candidate.exists():
        candidate, n = models_dir / f"{base}-{n}", n + 1
    return candidate


def headline_metrics(metrics: dict) -> tuple[str, dict]:
    """The figures to show for a model: its latest `python -m core.evaluate` result if any, else training's
    own validation (greedy). -> (where they come from, {"BLEU-4": 21.3, "CIDEr": 55.0, ...})."""
    evaluations = [(k, v) for k, v in metrics.items() if isinstance(v, dict) and "/" in k and "CIDEr" in v]
    if evaluations:  # the evaluation on the most images is the most telling
        key, values = max(evaluations, key=lambda kv: kv[1].get("images", 0))
        label = f"{key}, beam {values.get('beam', '?')}, {values.get('images', '?')} images"
    elif isinstance(metrics.get("val_greedy"), dict):
        label, values = "validation during training (greedy)", metrics["val_greedy"]
    else:
        return "", {}
    order = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
    return label, {k: values[k] for k in order if isinstance(values.get(k), (int, float))}


def publish_bundle(source: Path, name: str, models_dir: Path | None = None, metrics: dict | None = None,
                   card: str = "") -> Path:
    """Publish a finished bundle as a new model: `metrics` merged into its metrics.json and `card` written
    (each atomically), then the folder copied under models_dir with a name no other model has, and renamed
    into place in one step, so the app never lists a half-copied model nor one over a model in use."""
    import shutil

    source = Path(source)
    if metrics:
        update_metrics(source, metrics)
    if card:
        atomic_write_text(source / "card.md", card)
    models_dir = Path(models_dir or MODELS_DIR)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = new_bundle_dir(name, models_dir)
    tmp = models_dir / f".{target.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    os.replace(tmp, target)
    return target
