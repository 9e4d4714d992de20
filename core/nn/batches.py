"""Images to tensors: the one preprocessing used everywhere (`preprocess`), and batches of preprocessed images read
by a pool of threads (`iter_image_batches`), for the encoder in training, captioning and evaluation.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.data.images import DRAFT_SIDE, ImageError, load_image

if TYPE_CHECKING:
    import torch


def preprocess(img: Image.Image, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """RGB image -> normalised (3, size, size) float tensor.

    The whole photo is resized to a square without cropping: training copies (Flickr8k's 224x224) were
    made the same way, so a full-resolution upload looks to the model like the photos it learned from.
    """
    import torch  # here, not at the top: the pages import this module to inspect datasets and read uploads

    img = img.resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)  # (H, W, 3)
    x = (x - torch.tensor(mean)) / torch.tensor(std)
    return x.permute(2, 0, 1).contiguous()  # (3, H, W)


# ------------------------------------------------------------------------------------- batched loading

def iter_image_batches(sources: list, size: int, mean: tuple, std: tuple, batch_size: int, workers: int = 2,
                       on_loaded=None):
    """Decode and preprocess images in threads, one batch ahead of the caller's model.

    Yields (indices, images (n, 3, size, size), errors {index: message}) for consecutive slices of
    `sources` (paths or bytes). PIL releases the GIL while decoding, so loading overlaps the forward pass.
    `on_loaded(index)` is called, from a reading thread, as each image is read or found unreadable (progress).
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch

    def load(i):
        try:
            return i, preprocess(load_image(sources[i], draft_to=max(DRAFT_SIDE, 2 * size)), size, mean, std), None
        except ImageError as e:
            return i, None, str(e)
        finally:
            if on_loaded is not None:
                on_loaded(i)

    def load_batch(start):
        return list(pool.map(load, range(start, min(start + batch_size, len(sources)))))

    with ThreadPoolExecutor(max(1, workers)) as pool, ThreadPoolExecutor(1) as ahead:
        starts = list(range(0, len(sources), batch_size))
        pending = ahead.submit(load_batch, starts[0]) if starts else None
        for k in range(len(starts)):
            loaded = pending.result()
            pending = ahead.submit(load_batch, starts[k + 1]) if k + 1 < len(starts) else None
            ok = [(i, x) for i, x, _ in loaded if x is not None]
            errors = {i: err for i, _, err in loaded if err is not None}
            images = torch.stack([x for _, x in ok]) if ok else torch.empty(0, 3, size, size)
            yield [i for i, _ in ok], images, errors
