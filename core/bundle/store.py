"""Model bundles on disk, torch-free: reading and checking a bundle's parts, listing the models folder, the active
model, publishing a trained bundle, and the figures its metrics.json holds.

A bundle is a folder with model.safetensors + config.json + vocab.json + metrics.json + card.md. No pickle:
weights are safetensors, everything else JSON or Markdown. Reading checks that the parts fit together and
refuses pickled files, which can run arbitrary code when loaded. Building the model from the weights is
core.nn.weights' job: the pages list and compare models through this module without importing torch.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.base.config import BACKBONE_NAMES, DECODERS, ModelConfig
from core.base.files import atomic_write_json, atomic_write_text
from core.base.paths import models_dir
from core.data.vocabulary import SPECIALS, Vocabulary

if TYPE_CHECKING:  # torch is imported only by the functions that build or save a model: listing stays light

    pass

FORMAT = "caption-bundle/1"
MODELS_DIR = models_dir()
DEFAULT_MODEL = MODELS_DIR / "default"
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}
_MODEL_FILES = ("model.safetensors", "config.json", "vocab.json")
MAX_JSON_BYTES = 50_000_000  # config, vocab and metrics files are kilobytes; a bigger one is not ours
MAX_CARD_BYTES = 1_000_000
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on its JSON header (the Rust crate refuses larger ones)
STALE_PARTIAL_SECONDS = 600  # a publish copies a bundle in seconds; a `.partial` folder this old was interrupted
# sane ranges of config.json's numbers: a typo such as hidden_dim 80000 is refused before anything is allocated
SIZE_LIMITS = {"vocab_size": (len(SPECIALS) + 1, 1_000_000), "embed_dim": (1, 8192), "hidden_dim": (1, 8192),
               "attention_dim": (1, 8192), "feature_proj_dim": (1, 8192), "max_len": (1, 500),
               "ensemble": (1, 8)}


class BundleError(ValueError):
    """A model folder that cannot be used; the message says why in plain words."""


@dataclass
class BundleInfo:
    name: str
    path: Path
    config: dict
    metrics: dict = field(default_factory=dict)
    card: str = ""
    problem: str = ""  # why the model cannot be used; "" when it can
    notes: list[str] = field(default_factory=list)  # damage that does not stop it (e.g. unreadable metrics.json)

    @property
    def usable(self) -> bool:
        return not self.problem


def _open_regular(path: Path):
    """(open binary file, its size) when `path` (after links) is a regular file. Anything else is refused before a
    byte is read: a FIFO would block the reader forever and a device such as /dev/zero never ends (its size reads
    0). O_NONBLOCK lets even the open of a FIFO return at once; on a regular file it changes nothing."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{path} is not a regular file (it is {_file_kind(info.st_mode)}); a model's files must "
                              "be plain files")
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))
    return next((words for test, words in kinds if test(mode)), "not a plain file")


def _read_limited(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most `limit` of them (BundleError beyond: a file that big is not ours)."""
    f, size = _open_regular(path)
    with f:
        data = f.read(limit + 1)  # the size may have changed since fstat: the limit holds on what is read
    if max(size, len(data)) > limit:
        raise BundleError(f"{path} is {max(size, len(data)):,} bytes, too large for a model's {path.name}")
    return data


def _read_json(path: Path) -> dict:
    """A JSON object from a bundle file; anything else is a BundleError naming the file."""
    try:
        value = json.loads(_read_limited(path, MAX_JSON_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path.name} is missing in {path.parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid UTF-8 JSON ({e})") from None
    except OSError as e:
        raise BundleError(f"{path} cannot be read ({e.strerror or e})") from None
    if not isinstance(value, dict):
        raise BundleError(f"{path} must hold a JSON object {{...}}, not a {type(value).__name__}")
    return value


def _read_text(path: Path, limit: int = MAX_CARD_BYTES) -> str:
    """A text file such as card.md, never raising: bytes that are not UTF-8 (a Latin-1 edit) show as �; a file that
    is not a regular one (a FIFO...) or too large reads as ""."""
    try:
        f, _ = _open_regular(path)
        with f:
            return f.read(limit).decode("utf-8", errors="replace")
    except (OSError, BundleError):
        return ""


def _safetensors_header(f, size: int) -> dict | None:
    """The JSON header when the open file has safetensors' structure: an 8-byte little-endian length n, then n bytes
    of a JSON object, all within the file. None otherwise. Only the header is read."""
    head = f.read(8)
    if len(head) < 8:
        return None
    n = int.from_bytes(head, "little")
    if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
        return None
    header = f.read(n)
    if header[:1] != b"{":
        return None
    try:
        value = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _check_not_pickle(weights: Path) -> None:
    """model.safetensors must be a regular file with safetensors' structure. The structure is checked first: its
    first byte is the header length's low byte, 0x80 whenever that length is 128 mod 256, which is also how a raw
    pickle starts; so only a file that is not safetensors is told to be a pickle by its first bytes."""
    try:
        f, size = _open_regular(weights)
        with f:
            if _safetensors_header(f, size) is not None:
                return
            f.seek(0)
            head = f.read(8)
    except OSError as e:
        raise BundleError(f"{weights} cannot be read ({e.strerror or e})") from None
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch.save zip / raw pickle protocol >= 2
        raise BundleError(f"{weights} is a pickle (torch.save) file, not safetensors; pickles can run code when "
                          "loaded, so they are refused. Convert it to safetensors with the code that made it.")
    raise BundleError(f"{weights} cannot be read as safetensors (no 8-byte header length followed by a JSON header "
                      f"within its {size:,} bytes)")


def _check_config(raw: dict, path: Path) -> ModelConfig:
    """config.json's fields against their types and sane ranges, in words that name the file and the field."""
    if raw.get("format") != FORMAT:
        raise BundleError(f"{path} is format {raw.get('format')!r}; this version reads {FORMAT!r}")
    if raw.get("backbone") not in BACKBONE_NAMES:
        raise BundleError(f"{path}: the model needs backbone {raw.get('backbone')!r}, which this version does not "
                          f"have (known: {', '.join(BACKBONE_NAMES)})")
    if raw.get("decoder") not in DECODERS:
        raise BundleError(f"{path}: decoder {raw.get('decoder')!r} is unknown; known: {', '.join(DECODERS)}")
    for name, (lo, hi) in SIZE_LIMITS.items():
        value = raw.get(name, getattr(ModelConfig, name))
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise BundleError(f"{path}: {name} is {value!r}; it must be a whole number from {lo:,} to {hi:,}")
    dropout = raw.get("dropout", ModelConfig.dropout)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise BundleError(f"{path}: dropout is {dropout!r}; it must be a number from 0 up to (not including) 1")
    if not isinstance(raw.get("fine_tune", False), bool):
        raise BundleError(f"{path}: fine_tune is {raw.get('fine_tune')!r}; it must be true or false")
    return ModelConfig.from_dict(raw)


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
    return _check_config(_read_json(folder / "config.json"), folder / "config.json")


def read_vocab(folder: Path, cfg: ModelConfig) -> Vocabulary:
    """vocab.json, checked: a list of distinct words after the special tokens, as many as the model was built for."""
    path = Path(folder) / "vocab.json"
    tokens = _read_json(path).get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise BundleError(f"{path}: tokens must be a list of words")
    if tokens[:len(SPECIALS)] != list(SPECIALS):
        raise BundleError(f"{path}: tokens must start with the special tokens {', '.join(SPECIALS)} "
                          f"(found {', '.join(map(repr, tokens[:len(SPECIALS)])) or 'nothing'})")
    if len(tokens) == len(SPECIALS):
        raise BundleError(f"{path}: tokens holds no words besides the special tokens")
    if len(set(tokens)) != len(tokens):
        raise BundleError(f"{path}: tokens lists some words twice")
    if len(tokens) != cfg.vocab_size:
        raise BundleError(f"{path} has {len(tokens)} words but the model was built for {cfg.vocab_size} "
                          f"(vocab_size in config.json)")
    return Vocabulary(tokens[len(SPECIALS):])


def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """The tensors model.safetensors declares, from its header only (nothing is loaded; no torch needed)."""
    from safetensors import SafetensorError, safe_open

    path = Path(folder) / "model.safetensors"
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{path} cannot be read as safetensors ({e})") from None


def check_shapes(folder: Path, cfg: ModelConfig, shapes: dict) -> None:
    """The weights against the model the config describes, built on torch's "meta" device: no memory is allocated,
    so a config that asks for an absurd model costs nothing before it is refused."""
    import torch
    from torch.overrides import TorchFunctionMode

    from core.nn.model import CaptionModel

    # Random fills that torch computes on meta tensors with Python reference kernels (torch._refs), which import
    # torch._dynamo on first use: about 1.7 s on this 2-core CPU for a check of shapes. (Loading the model then
    # imports it all the same with the EfficientNet and ResNet backbones: timm -> torchvision -> torch._dynamo.)
    meta_fills = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.log_normal_, torch.Tensor.exponential_,
                  torch.Tensor.cauchy_, torch.Tensor.geometric_, torch.Tensor.erfinv_, torch.Tensor.clamp_}

    class SkipMetaInit(TorchFunctionMode):
        """Initialising a meta tensor is a no-op (it holds no values; shapes are all this check needs), so the
        modules' reset_parameters() skip it: torch.nn.init's functions and the in-place fills they (or a library's
        own init, such as timm's) call on a meta tensor return it as it is."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            tensor = args[0] if args else kwargs.get("tensor")
            if (isinstance(tensor, torch.Tensor) and tensor.is_meta
                    and (func in meta_fills or getattr(func, "__module__", None) == "torch.nn.init")):
                return tensor
            return func(*args, **kwargs)

    with torch.device("meta"), SkipMetaInit():
        model = CaptionModel(cfg, with_encoder=cfg.fine_tune, pretrained=False)  # a frozen encoder is not stored
        expected = {k: tuple(v.shape) for k, v in model.trainable_state_dict().items()}
    missing, unexpected = set(expected) - set(shapes), set(shapes) - set(expected)
    if missing or unexpected:
        raise BundleError(f"{folder}/model.safetensors does not fit config.json (decoder {cfg.decoder}, fine_tune "
                          f"{cfg.fine_tune}): missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    for k, shape in shapes.items():
        if shape != expected[k]:
            sizes = ", ".join(f"{n} {getattr(cfg, n)}" for n in SIZE_LIMITS)
            raise BundleError(f"{folder}/model.safetensors: weight {k} has shape {shape}, but config.json ({sizes}) "
                              f"needs {expected[k]}")


def read_metrics(folder: Path) -> tuple[dict, list[str]]:
    """metrics.json, or {} and a note: scores are for show, a damaged file must not stop the model."""
    path = Path(folder) / "metrics.json"
    if not path.exists():
        return {}, []
    try:
        return _read_json(path), []
    except BundleError as e:
        return {}, [f"its scores are not shown: {e}"]


def update_metrics(folder: Path, new: dict) -> dict:
    path = Path(folder) / "metrics.json"
    metrics = _read_json(path) if path.exists() else {}
    metrics.update(new)
    atomic_write_json(path, metrics)
    return metrics


def _is_listed(folder: Path) -> bool:
    """Hidden folders and those an interrupted publish left (`*.partial`) are never models."""
    return folder.is_dir() and not folder.name.startswith(".") and not folder.name.endswith(".partial")


def inspect_bundle(folder: Path) -> BundleInfo:
    """What the pages show about a model folder, without torch and without reading the weights; never raises:
    a damaged folder comes back with `problem` saying why it cannot be used."""
    folder = Path(folder)
    try:
        cfg = read_config(folder)
        read_vocab(folder, cfg)
        weight_shapes(folder)
    except BundleError as e:
        return BundleInfo(folder.name, folder, {}, problem=str(e))
    except OSError as e:  # e.g. a folder without read permission
        return BundleInfo(folder.name, folder, {}, problem=f"{folder} cannot be read ({e.strerror or e})")
    metrics, notes = read_metrics(folder)
    return BundleInfo(folder.name, folder, cfg.to_dict(), metrics, _read_text(folder / "card.md"), notes=notes)


def list_bundles(models_dir: Path | None = None) -> list[BundleInfo]:
    """Every model folder, the shipped one first; damaged ones are listed with their `problem`, never raised.
    Folders with no model file at all (not a model) are left out."""
    models_dir = Path(models_dir or MODELS_DIR)
    try:
        folders = sorted(p for p in models_dir.iterdir() if _is_listed(p))
    except OSError:
        return []
    found = []
    for folder in folders:
        try:
            names = {p.name for p in folder.iterdir()}
        except OSError as e:
            found.append(BundleInfo(folder.name, folder, {}, problem=f"{folder} cannot be read ({e.strerror or e})"))
            continue
        if names & set(_MODEL_FILES) or any(Path(n).suffix in _PICKLE_SUFFIXES for n in names):
            found.append(inspect_bundle(folder))
    found.sort(key=lambda b: (b.name != "default", b.name))  # the shipped model first
    return found


def get_active(models_dir: Path | None = None) -> Path:
    """The bundle the Caption page starts with: chosen with set_active, else models/default."""
    models_dir = Path(models_dir or MODELS_DIR)
    try:
        name = json.loads(_read_limited(models_dir / "active.json", MAX_CARD_BYTES))["name"]
        if Path(name).name == name and _is_listed(models_dir / name) and (models_dir / name / "model.safetensors").exists():
            return models_dir / name
    except (OSError, ValueError, KeyError, TypeError):  # BundleError is a ValueError: a FIFO, a huge file
        pass
    return models_dir / "default"


def set_active(name: str, models_dir: Path | None = None) -> None:
    models_dir = Path(models_dir or MODELS_DIR)
    if Path(name).name != name or not _is_listed(models_dir / name) or not (models_dir / name / "model.safetensors").exists():
        raise BundleError(f"there is no model called {name!r} in {models_dir}")
    atomic_write_json(models_dir / "active.json", {"name": name})


def new_bundle_dir(name: str, models_dir: Path | None = None) -> Path:
    """A folder for a new model that never overwrites an existing one ("mymodel", "mymodel-2", ...)."""
    models_dir = Path(models_dir or MODELS_DIR)
    remove_interrupted(models_dir)
    base = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name).strip(".-") or "model"
    candidate, n = models_dir / base, 2
    while candidate.exists():
        candidate, n = models_dir / f"{base}-{n}", n + 1
    return candidate


def remove_interrupted(models_dir: Path | None = None, older_than: float = STALE_PARTIAL_SECONDS) -> list[Path]:
    """Delete the `*.partial` folders an interrupted publish left behind (only stale ones: a publish running right
    now keeps its own). Called before every publish, so the debris goes the next time a model is made."""
    models_dir = Path(models_dir or MODELS_DIR)
    removed = []
    try:
        candidates = [p for p in models_dir.iterdir() if p.is_dir() and p.name.endswith(".partial")]
    except OSError:
        return removed
    for p in candidates:
        try:
            if time.time() - p.stat().st_mtime > older_than:
                shutil.rmtree(p)
                removed.append(p)
        except OSError:
            pass  # still in use or already gone: the next publish tries again
    return removed


def headline_metrics(metrics: dict) -> tuple[str, dict]:
    """The figures to show for a model: its latest `python -m core.evaluate` result if any, else training's
    own validation (greedy). -> (where they come from, {"BLEU-4": 21.3, "CIDEr": 55.0, ...})."""
    if not isinstance(metrics, dict):
        return "", {}
    evaluations = [(k, v) for k, v in metrics.items() if isinstance(v, dict) and "/" in k and "CIDEr" in v]
    if evaluations:  # the evaluation on the most images is the most telling
        key, values = max(evaluations, key=lambda kv: _number(kv[1].get("images")))
        label = f"{key}, beam {values.get('beam', '?')}, {values.get('images', '?')} images"
        if isinstance(values.get("measured_on"), str):  # a model that learned from the split: scored by its twin
            label += f", {values['measured_on']}"
    elif isinstance(metrics.get("val_greedy"), dict):
        label, values = "validation during training (greedy)", metrics["val_greedy"]
    else:
        return "", {}
    order = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
    return label, {k: values[k] for k in order if _number(values.get(k), None) is not None}


def _number(value, default=0):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def publish_bundle(source: Path, name: str, models_dir: Path | None = None, metrics: dict | None = None,
                   card: str = "") -> Path:
    """Publish a finished bundle as a new model: `metrics` merged into its metrics.json and `card` written
    (each atomically), then the folder copied under models_dir with a name no other model has, and renamed
    into place in one step, so the app never lists a half-copied model nor one over a model in use."""
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
