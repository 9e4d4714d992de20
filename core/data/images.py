"""Reading images: the formats the app reads (JPEG, PNG, WebP, BMP, GIF, TIFF, HEIC/HEIF, AVIF where Pillow has
it), EXIF rotation, 8-bit conversion, decompression-bomb limits, the plain-words reason a file is not read, and the one finder of images in folders
(the command line, a photo library, the Caption page).

Torch-free: the pages read uploads through it; core.nn.batches turns the images into tensors.
"""
from __future__ import annotations

import fnmatch
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError, features

if TYPE_CHECKING:
    pass

# iPhones save HEIC (HEVC in a HEIF box); pillow-heif teaches Pillow to read it (format "HEIF"), applying the
# file's rotation itself, so exif_transpose below finds orientation 1 and does not turn it twice.
pillow_heif.register_heif_opener(thumbnails=False)
# AVIF: Pillow's own plugin, in its wheels for Linux, macOS and Windows since 11.3; a build without libavif lists none
AVIF = features.check("avif")

# The one list of image files the app reads (uploads, zips, folders, datasets): extension -> Pillow format.
# Files are opened with only these decoders, whatever their name says: an EPS renamed .jpg never reaches Ghostscript.
IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".gif": "GIF",
                 ".tif": "TIFF", ".tiff": "TIFF", ".heic": "HEIF", ".heif": "HEIF", ".hif": "HEIF",
                 **({".avif": "AVIF"} if AVIF else {})}
IMAGE_EXTENSIONS = tuple(IMAGE_FORMATS)
PIL_FORMATS = tuple(dict.fromkeys(IMAGE_FORMATS.values()))  # JPEG covers phones' multi-picture JPEGs (MPO) too
FORMAT_NAMES = "JPEG, PNG, WebP, BMP, GIF, TIFF, HEIC/HEIF" + (", AVIF" if AVIF else "")
# Files people try that are not read, with what to do instead (the row's error): suffix -> reason
NOT_READ = {
    **dict.fromkeys((".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".pef", ".srw"),
                    "a camera RAW file, which is not read here; export it as JPEG (or HEIC) first"),
    **dict.fromkeys((".mov", ".mp4", ".m4v", ".avi", ".mkv", ".3gp"),
                    "a video (e.g. a Live Photo's movie part), not a photo; only still images are captioned"),
    **dict.fromkeys((".svg", ".eps", ".ps", ".pdf", ".psd", ".ico", ".jxl"),
                    "not one of the image formats read here"),
}


def not_read_reason(name: str) -> str | None:
    """Why a file is not read, judged by its name alone (zips and folders cannot afford to open everything),
    or None when its extension is one of IMAGE_EXTENSIONS."""
    suffix = Path(name).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return None
    if suffix == ".avif":
        return "AVIF is not read by this build of Pillow (it was built without libavif); convert it to JPEG"
    known = NOT_READ.get(suffix, "not an image file")
    return f"{known} ({suffix or 'no extension'}); the images read are {FORMAT_NAMES}"


MAX_PIXELS = 100_000_000  # larger images are refused before decoding (decompression bombs); 48-MP photos pass
DRAFT_SIDE = 512  # JPEGs decode at the smallest 1/2, 1/4 or 1/8 scale still at least this big (Pillow's draft)
# Pillow's own bomb check warns above MAX_IMAGE_PIXELS and raises above twice that; ours refuses above MAX_PIXELS
# in plain words first, so Pillow's check is only the backstop for what reaches it another way.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class ImageError(ValueError):
    """An input that cannot be used as an image; the message is meant for the user."""


# ---------------------------------------------------------------------------------------------- images

@dataclass(frozen=True)
class Refused:
    """An input turned down before decoding (too large, encrypted, over the batch's budget...). Passed where an
    image is expected, it gives its reason as the row's error."""
    reason: str


def _open(fp) -> Image.Image:
    """Open (the header only) with the allowed decoders, refusing more than MAX_PIXELS before anything is decoded."""
    img = Image.open(fp, formats=PIL_FORMATS)
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise ImageError(f"the image is {w:,} x {h:,} pixels ({w * h / 1e6:,.0f} megapixels); the limit is "
                         f"{MAX_PIXELS / 1e6:,.0f} megapixels")
    return img


def _source(source: Path | str | bytes | Refused):
    if isinstance(source, Refused):
        raise ImageError(source.reason)
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise ImageError("the file is empty (0 bytes)")
        return io.BytesIO(source)
    source = Path(source)
    if not source.is_file():
        raise ImageError(f"file not found: {source}")
    if source.stat().st_size == 0:
        raise ImageError("the file is empty (0 bytes)")
    return source


def _errors(e: Exception) -> ImageError:
    if isinstance(e, ImageError):
        return e
    if isinstance(e, Image.DecompressionBombError):
        return ImageError(f"the image has too many pixels (more than {MAX_PIXELS:,})")
    if isinstance(e, UnidentifiedImageError):
        return ImageError(f"not an image, or not one of the formats read here ({FORMAT_NAMES})")
    return ImageError(f"the image is damaged or truncated ({e})")  # OSError, SyntaxError, ValueError


def probe_image(source: Path | str | bytes | Refused, draft_to: int | None = DRAFT_SIDE) -> tuple[str, int, int]:
    """(format, width, height that decoding will produce) from the header alone; JPEGs count at their draft size.
    Raises ImageError for what load_image would refuse without decoding (not an image, too many pixels)."""
    try:
        with _open(_source(source)) as img:
            if draft_to and img.format in ("JPEG", "MPO"):
                img.draft("RGB", (draft_to, draft_to))
            return img.format, img.width, img.height
    except (ImageError, UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise _errors(e) from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey (modes I;16*, I, F) scaled to 8 bits; Pillow's convert would clip them (50% -> white)."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        a = a.astype(np.float32) / 257.0  # 65535 -> 255
    elif img.mode == "I":  # 16-bit PNGs open in this 32-bit mode too: their values fit 16 bits
        a = a.astype(np.float64) / (257.0 if a.size and 0 <= a.min() and a.max() <= 65535 else (2 ** 31 - 1) / 255.0)
    else:  # "F": floats, usually 0..1
        a = a * 255.0 if a.size and 0 <= a.min() and a.max() <= 1.0 else a
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


_REDUCIBLE = {"L", "LA", "RGB", "RGBA", "I", "F", "CMYK"}


def load_image(source: Path | str | bytes | Refused, draft_to: int | None = None) -> Image.Image:
    """Open an image file or bytes as RGB, rotated as its EXIF orientation says (GIF: first frame).

    `draft_to`: a JPEG decodes at the smallest 1/2, 1/4 or 1/8 scale still at least this many pixels on each side,
    so a 48-megapixel photo costs what a 1-megapixel one does; other formats are shrunk by an integer factor
    (never below `draft_to`) right after decoding."""
    try:
        with _open(_source(source)) as img:
            img.seek(0)
            if draft_to and img.format in ("JPEG", "MPO"):
                img.draft("RGB", (draft_to, draft_to))
            img = ImageOps.exif_transpose(img)
            if draft_to and img.mode in _REDUCIBLE and (factor := min(img.size) // draft_to) >= 2:
                img = img.reduce(factor)  # other formats cannot decode small: shrink before the RGB copy is made
            if img.mode in ("I", "F") or img.mode.startswith("I;16"):
                img = _to_8bit(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                # transparent pixels become white rather than whatever colour hides under the alpha channel
                rgba = img.convert("RGBA")
                canvas = Image.new("RGB", rgba.size, (255, 255, 255))
                canvas.paste(rgba, mask=rgba.getchannel("A"))
                return canvas
            return img.convert("RGB")
    except (ImageError, UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise _errors(e) from None


# ---------------------------------------------------------------------------------------------- finding

def is_hidden(name: str) -> bool:
    """A file or folder name that starts with a dot: hidden on macOS and Linux, and what the systems leave beside
    photos by themselves (.DS_Store, .thumbnails/, macOS's ._photo.jpg AppleDouble files: named like the photo,
    but metadata, no picture), never a photo to caption."""
    return name.startswith(".")


def find_images(root: Path | str, recursive: bool = True, include=(), exclude=()) -> list[Path]:
    """The image files under the folder `root`, sorted by their path as text; hidden files and folders left out.

    A pattern matches the path relative to `root` (`2023/*.jpg`, `**/raw/*`) or the file name (`*.png`); with
    `include` a file must match one, and one matching an `exclude` pattern is left out. Only names below `root`
    count as hidden: a library kept in ~/.photos is found. Links to folders are not followed (a loop is no risk)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"the folder {root} does not exist")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d)) if recursive else []
        for name in files:
            if is_hidden(name) or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if include and not _matches(rel, include):
                continue
            if exclude and _matches(rel, exclude):
                continue
            found.append((rel, path))
    return [p for _, p in sorted(found)]


def _matches(rel: str, patterns) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p.removeprefix("**/"))
               for p in patterns)


def collect_images(paths, recursive: bool = True, include=(), exclude=()) -> list[Path]:
    """The images find_images finds in the named folders, plus the files named directly; sorted by path as text,
    no duplicates. A file named directly is kept whatever its name (a user who names ._x.jpg asked for it, and a
    file that is not an image gets its error row): the rules are for what a folder happens to hold."""
    found = []
    for p in map(Path, paths):
        found += find_images(p, recursive, include, exclude) if p.is_dir() else [p]
    return sorted(dict.fromkeys(found), key=lambda p: p.as_posix())
