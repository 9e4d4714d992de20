"""Fixtures every test builds for itself: tiny images, tiny datasets in both layouts, a tiny trained model."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30)}
SHAPES = ("square", "stripe")


def make_image(path: Path, colour: str, shape: str, size: int = 48, seed: int = 0) -> Path:
    """A solid colour square, or the colour as horizontal stripes on white; a little noise so no two are equal."""
    rng = np.random.default_rng(seed)
    arr = np.full((size, size, 3), 255, np.uint8)
    if shape == "square":
        arr[:] = COLOURS[colour]
    else:
        arr[::6] = arr[1::6] = arr[2::6] = COLOURS[colour]
    arr = np.clip(arr.astype(int) + rng.integers(-8, 8, arr.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_phone_photo(path: Path, orientation: int = 1) -> Path:
    """A 40 x 20 photo, red left half and blue right half, saved in the format its suffix names (.heic/.heif
    through pillow-heif, .avif through Pillow, .jpg...) with this EXIF orientation (6: shown turned 90 degrees
    clockwise, as a phone held upright saves it): decoded upright it is 20 x 40, red on top."""
    import core.data.images  # noqa: F401 (registers pillow-heif's HEIF plugin, which saves HEIC too)

    img = Image.new("RGB", (40, 20), (220, 20, 20))
    img.paste((20, 20, 220), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    fmt = {".heic": "HEIF", ".heif": "HEIF", ".avif": "AVIF", ".jpg": "JPEG"}[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, exif=exif.tobytes(), quality=95)
    return path


def make_flickr(root: Path, per_class: int = 2, split_files: bool = True, held_out: int = 0) -> Path:
    """Flickr layout: captions.txt + images/ (+ split lists); `per_class` images of each colour x shape (4 x 2),
    captioned "a <colour> <shape>" in 2 phrasings.

    The split lists: by default every image is a training image and every other one a dev image too (a tiny model
    is scored on what it learned); `held_out=k` makes k images dev images only (the last image of each class, class
    by class) and the rest training images, disjoint as Flickr8k's lists are (the Train page counts those)."""
    classes = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    assert 0 <= held_out <= len(classes) and (held_out == 0 or per_class >= 2), "every class keeps a training image"
    rows, names = [], []
    for colour, shape in classes:
        for k in range(per_class):
            name = f"{colour}_{shape}_{k}.png"
            make_image(root / "images" / name, colour, shape, seed=len(names))
            names.append(name)
            rows += [(name, f"a {colour} {shape}"), (name, f"A {colour} {shape} .")]
    with open(root / "captions.txt", "w", newline="") as f:
        csv.writer(f).writerows([("image", "caption"), *rows])
    if split_files:
        train, dev = names, names[::2]
        if held_out:
            dev = [n for i, n in enumerate(names) if i % per_class == per_class - 1][:held_out]
            train = [n for n in names if n not in dev]
        (root / "Flickr_8k.trainImages.txt").write_text("\n".join(train) + "\n")
        (root / "Flickr_8k.devImages.txt").write_text("\n".join(dev) + "\n")
    return root


def make_coco(root: Path, split: str = "val") -> Path:
    """COCO layout: annotations/captions_<split>2017.json + images/<split>2017/."""
    images, anns = [], []
    for i, colour in enumerate(COLOURS):
        name = f"{i:012d}.jpg"
        make_image(root / "images" / f"{split}2017" / name, colour, "square", seed=i)
        images.append({"id": i, "file_name": name, "width": 48, "height": 48})
        anns += [{"id": 10 * i + j, "image_id": i, "caption": f"a {colour} square"} for j in range(2)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"captions_{split}2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "info": {}, "licenses": []}))
    return root


@pytest.fixture
def tiny_flickr(tmp_path) -> Path:
    return make_flickr(tmp_path / "flickr")


def tiny_train_config(data: Path, tmp: Path, **overrides):
    from core.base.config import TrainConfig

    base = dict(data=str(data), decoder="show_tell", embed_dim=32, hidden_dim=64, attention_dim=32, dropout=0.0,
                min_word_count=1, epochs=60, batch_size=8, lr=1e-2, warmup_steps=20, val_images=50,
                checkpoint_every=1000, log_every=5, models_dir=str(tmp / "models"), cache_dir=str(tmp / "cache"),
                model_name="tiny", max_len=8)
    base.update(overrides)
    return TrainConfig.from_dict(base)  # flat model keys (decoder, embed_dim, ...) go into cfg.model


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A Show-and-Tell model trained until it captions the tiny dataset's images correctly (about 20 s on 2 cores)."""
    from core.train.trainer import run

    tmp = tmp_path_factory.mktemp("tiny_bundle")
    data = make_flickr(tmp / "flickr")
    return run(tiny_train_config(data, tmp), tmp / "run")


@pytest.fixture(scope="session")
def tiny_attention_bundle(tmp_path_factory) -> Path:
    from core.train.trainer import run

    tmp = tmp_path_factory.mktemp("tiny_attention")
    data = make_flickr(tmp / "flickr")
    return run(tiny_train_config(data, tmp, decoder="attention", epochs=40), tmp / "run")


@pytest.fixture(scope="module", autouse=True)
def no_caption_worker_left_behind():
    """A module whose pages started the caption worker (ui.warm) stops it when it ends, so that later modules (the
    torchrun tests among them) run without it."""
    yield
    import sys

    warm = sys.modules.get("ui.warm")
    if warm is not None and warm._client is not None:
        warm.reset()
