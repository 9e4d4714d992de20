"""Pictures for the pages: small data: URLs for table thumbnails and attention heat-maps (PIL + numpy)."""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from core.data.images import ImageError, load_image

# anchor colours of a dark-to-bright heat map (black, purple, red, orange, pale yellow)
_HEAT = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)


def open_image(data, draft_to: int | None = None) -> Image.Image | None:
    try:
        return load_image(data, draft_to=draft_to)
    except ImageError:
        return None


def _jpeg(data, size: int, quality: int) -> bytes | None:
    img = open_image(data, draft_to=size)  # JPEGs decode at a reduced size: a 48-MP photo stays cheap
    if img is None:
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


THUMB_SIDE = 144  # px: twice the review table's row height, so the thumbnail stays sharp on a high-density screen


def thumbnail_jpeg(data, size: int = THUMB_SIDE) -> bytes | None:
    """A small JPEG of the image (bytes or a path), or None when it is not an image."""
    return _jpeg(data, size, 80)


def data_url(jpeg: bytes | None) -> str | None:
    """JPEG bytes as a data: URL (for st.column_config.ImageColumn)."""
    return None if not jpeg else "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def thumbnail_data_url(data, size: int = THUMB_SIDE) -> str | None:
    """A small JPEG as a data: URL (for st.column_config.ImageColumn), or None when it is not an image."""
    return data_url(thumbnail_jpeg(data, size))


def preview_bytes(data, size: int = 800) -> bytes:
    """What a finished batch keeps of an upload for the close-up view: a JPEG at most `size` px (b"" if none),
    so the session does not hold every uploaded (and unzipped) original."""
    return _jpeg(data, size, 88) or b""


def heat_colors(a: np.ndarray) -> np.ndarray:
    """(H, W) floats in [0, 1] -> (H, W, 3) uint8."""
    x = np.clip(a, 0.0, 1.0) * (len(_HEAT) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_HEAT) - 2)
    t = (x - lo)[..., None]
    return ((1 - t) * _HEAT[lo] + t * _HEAT[lo + 1]).astype(np.uint8)


def attention_overlay(img: Image.Image, attention: np.ndarray, alpha: float = 0.6, size: int = 224) -> Image.Image:
    """The photo (scaled to `size` px wide) under one word's attention grid, scaled to its max, as a heat map."""
    img = img.convert("RGB")
    img = img.resize((size, max(1, round(img.height * size / img.width))))
    a = np.asarray(attention, dtype=np.float32)
    a = a / a.max() if a.size and a.max() > 0 else np.zeros_like(a)
    grid = Image.fromarray(a).resize(img.size, Image.Resampling.BILINEAR)  # smooth the coarse grid
    heat = heat_colors(np.asarray(grid))
    photo = np.asarray(img, dtype=np.float32)
    return Image.fromarray((photo * (1 - alpha) + heat * alpha).astype(np.uint8))
