"""Augmented views of the training photos, cached like the plain ones (`--views N`).

View 0 is the photo as the app sees it. Odd views are mirrored (left and right swap in the captions: "a man holds
a ball in his left hand" becomes "... right hand"); views from 2 on are random resized crops (55-100% of the
area, aspect 3:4 to 4:3), their position and size fixed by the photo's name and the view number, so that a view
is the same in every run and on every rank and can be cached once. No colour jitter: colours are words in the
captions ("a girl in a pink dress"). Each epoch picks one view per photo (`epoch_views`).
"""
from __future__ import annotations

import math
import random
import zlib

import numpy as np
import torch
import torch.nn.functional as F

AUGMENT_VERSION = "flip-crop/1"  # change when a view's definition changes: old caches of views stop matching
CROP_SCALE = (0.55, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
SWAPS = (("left", "right"),)  # words a mirror image swaps


def is_flipped(view: int) -> bool:
    return view % 2 == 1


def crop_box(name: str, view: int) -> tuple[float, float, float, float] | None:
    """(top, left, height, width) as fractions of the photo, or None (no crop) for views 0 and 1."""
    if view < 2:
        return None
    rng = random.Random(zlib.crc32(f"{name}|{view}".encode()))
    for _ in range(10):  # torchvision's RandomResizedCrop rule: an area and a log-uniform aspect that fit
        area = rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if w <= 1 and h <= 1:
            return rng.uniform(0, 1 - h), rng.uniform(0, 1 - w), h, w
    return 0.0, 0.0, 1.0, 1.0


def apply_view(images: torch.Tensor, names: list[str], view: int) -> torch.Tensor:
    """images (n, 3, S, S), preprocessed (core.nn.batches.preprocess), of the photos `names` -> their view `view`."""
    if view == 0:
        return images
    S = images.size(-1)
    out = []
    for x, name in zip(images, names):
        box = crop_box(name, view)
        if box is not None:
            top, left, h, w = (round(v * S) for v in box)
            x = x[:, top:top + max(h, 1), left:left + max(w, 1)]  # (3, h, w)
            x = F.interpolate(x.unsqueeze(0), size=(S, S), mode="bicubic", align_corners=False, antialias=True)[0]
        out.append(x.flip(-1) if is_flipped(view) else x)
    return torch.stack(out)  # (n, 3, S, S)


def swap_table(stoi: dict[str, int], vocab_size: int) -> torch.Tensor:
    """(V,) token -> its mirror-image token: "left" <-> "right", every other word itself."""
    table = torch.arange(vocab_size)
    for a, b in SWAPS:
        if a in stoi and b in stoi:
            table[stoi[a]], table[stoi[b]] = stoi[b], stoi[a]
    return table


def epoch_views(n_images: int, views: int, seed: int, epoch: int) -> np.ndarray:
    """(n_images,) the view each training photo is seen at this epoch: a pure function of seed and epoch (a resumed
    epoch sees the same views)."""
    if views <= 1:
        return np.zeros(n_images, dtype=np.int64)
    return np.random.default_rng(seed * 1000 + epoch + 7).integers(0, views, n_images)
