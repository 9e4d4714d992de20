"""Caption datasets (COCO and Flickr layouts), image loading and the one preprocessing used everywhere.

Every path is an argument. A dataset is a sorted list of `ImageCaptions`; images that are missing are
left out and counted, unreadable ones are found (and skipped) when their features are computed.
"""
from __future__ import annotations

import csv
import io
import warnings
import zlib
from collections import defaultdict
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError, features

if TYPE_CHECKING:
    import torch

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

COCO_HELP = """\
**Getting COCO-2017** (about 19 GB for the training images):

1. Download `train2017.zip`, `val2017.zip` and `annotations_trainval2017.zip` from https://cocodataset.org/#download
2. Unzip them so that the project folder holds
   - `cocoapi/images/train2017/*.jpg` and `cocoapi/images/val2017/*.jpg`
   - `cocoapi/annotations/captions_train2017.json` and `cocoapi/annotations/captions_val2017.json`
3. Or point the trainer at any folder in COCO layout (`annotations/captions_<split>2017.json` + `images/<split>2017/`)
   or Flickr layout (`captions.txt` with `image,caption` rows + `images/`).
"""


class ImageError(ValueError):
    """An input that cannot be used as an image; the message is meant for the user."""


@dataclass
class ImageCaptions:
    path: Path
    captions: list[str]


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


def collect_images(paths) -> list[Path]:
    """Image files named directly, plus those found (recursively) in named folders; sorted, no duplicates."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += [f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
        else:
            found.append(p)  # named explicitly: kept even if it is not an image, so the user sees an error row
    return sorted(dict.fromkeys(found))


# -------------------------------------------------------------------------------------------- datasets

def load_coco(annotation_file: Path, image_dir: Path) -> list[ImageCaptions]:
    """A COCO-format caption file (e.g. captions_train2017.json) read through pycocotools."""
    from pycocotools.coco import COCO

    with redirect_stdout(io.StringIO()):  # pycocotools prints timing lines we do not want in our logs
        coco = COCO(str(annotation_file))
    items = []
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        caps = [a["caption"].strip() for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id))]
        if caps:
            items.append(ImageCaptions(Path(image_dir) / info["file_name"], caps))
    return items


def load_flickr(captions_file: Path, image_dir: Path, names: set[str] | None = None) -> list[ImageCaptions]:
    """A Flickr-style `image,caption` CSV; `names` restricts it to one split's image names."""
    caps = defaultdict(list)
    with open(captions_file, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
            raise ValueError(f"{captions_file} must start with the header 'image,caption'")
        for row in reader:
            if len(row) >= 2 and row[1].strip():
                name = row[0].strip().split("#")[0]  # Flickr8k.token.txt style "x.jpg#0" names
                if names is None or name in names:
                    caps[name].append(row[1].strip())
    return [ImageCaptions(Path(image_dir) / n, caps[n]) for n in sorted(caps)]


def _coco_files(root: Path, split: str) -> tuple[Path, Path] | None:
    for ann in sorted((root / "annotations").glob(f"captions_{split}*.json")):
        tag = ann.stem[len("captions_"):]  # e.g. "train2017"
        for image_dir in (root / "images" / tag, root / tag):
            if image_dir.is_dir():
                return ann, image_dir
        return ann, root / "images" / tag
    return None


def _flickr_files(root: Path) -> tuple[Path, Path] | None:
    captions = root / "captions.txt"
    if not captions.is_file():
        return None
    image_dir = root / "images" if (root / "images").is_dir() else root
    return captions, image_dir


_FLICKR_SPLIT_FILES = {"train": ("*trainImages.txt",), "val": ("*devImages.txt", "*valImages.txt"), "test": ("*testImages.txt",)}


def _flickr_split_names(root: Path, split: str) -> set[str] | None:
    for pattern in _FLICKR_SPLIT_FILES.get(split, (f"*{split}Images.txt",)):
        for f in sorted(root.glob(pattern)):
            return {line.strip() for line in f.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()}
    return None


def _hash_split(name: str) -> str:
    return "val" if zlib.crc32(name.encode()) % 20 == 0 else "train"  # a stable 5% for validation


def load_split(root: Path | str, split: str) -> tuple[list[ImageCaptions], int]:
    """One split of a dataset folder in COCO or Flickr layout -> (items whose image exists, number missing).
    "train+val" joins splits: the shipped model is trained on every captioned photo once its recipe is chosen."""
    root = Path(root)
    if "+" in split:
        parts = [load_split(root, part) for part in split.split("+")]
        return [it for items, _ in parts for it in items], sum(missing for _, missing in parts)
    coco = _coco_files(root, split)
    if coco:
        items = load_coco(*coco)
    elif _flickr_files(root):
        captions, image_dir = _flickr_files(root)
        names = _flickr_split_names(root, split)
        items = load_flickr(captions, image_dir, names)
        if names is None and split in ("train", "val"):
            items = [it for it in items if _hash_split(it.path.name) == split]
    else:
        raise FileNotFoundError(f"no {split!r} split found in {root}: expected COCO or Flickr layout")
    present = [it for it in items if it.path.is_file()]
    return present, len(items) - len(present)


MISSING_TOLERANCE = 0.01  # a split with more of its listed images missing is refused unless allow_missing


def split_label(root: Path | str, split: str) -> str:
    """The split's name as the user knows it: "train2017" for COCO's captions_train2017.json, else `split`."""
    if "+" in split:
        return "+".join(split_label(root, part) for part in split.split("+"))
    coco = _coco_files(Path(root), split)
    return coco[0].stem[len("captions_"):] if coco else split


def missing_report(label: str, found: int, missing: int, allow_missing: bool = False) -> tuple[list[str], list[str]]:
    """(problems, notes) about a split's listed images that are not on disk: more than MISSING_TOLERANCE of them
    is a problem (a half-unzipped COCO would otherwise train on what happened to be unpacked), unless allowed."""
    if not missing:
        return [], []
    listed = found + missing
    if missing <= MISSING_TOLERANCE * listed:
        return [], [f"{label}: {found:,} of {listed:,} images found; the {missing:,} missing are left out"]
    message = f"{label}: {found:,} of {listed:,} images found (is the unzip complete?)"
    if allow_missing:
        return [], [message + "; training on the images found (allow missing)"]
    return [message + f"; more than {MISSING_TOLERANCE:.0%} missing: finish the unzip, or allow missing images "
                      "(--allow-missing) to train on those found"], []


def _same_image_key(path: Path) -> tuple[str, int]:
    return path.name, path.stat().st_size


def shared_images(train: list[ImageCaptions], val: list[ImageCaptions]) -> list[Path]:
    """Validation images that are also training images: the same file, or a copy (same name and size)."""
    train_keys = {_same_image_key(it.path) for it in train}
    return [it.path for it in val if _same_image_key(it.path) in train_keys]


def overlap_note(train_label: str, val_label: str, shared: list[Path], n_val: int) -> list[str]:
    if not shared:
        return []
    return [f"{len(shared):,} of the {n_val:,} {val_label} images are also in {train_label} (e.g. {shared[0].name}): "
            "validation scores on them measure memory, not captioning"]


@dataclass
class DatasetInfo:
    path: Path
    format: str | None = None
    splits: dict[str, int] = field(default_factory=dict)  # split -> images present
    n_captions: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not in the way: few missing images, overlap

    @property
    def ok(self) -> bool:
        return not self.problems


def inspect_dataset(path: Path | str, splits=("train", "val"), allow_missing: bool = False) -> DatasetInfo:
    """Check a dataset folder before training; problems (which stop a run) and notes are plain-words messages."""
    root = Path(path).expanduser()
    info = DatasetInfo(root)
    if not root.is_dir():
        info.problems.append(f"the folder {root} does not exist")
        return info
    if any((root / "annotations").glob("captions_*.json")):
        info.format = "coco"
    elif _flickr_files(root):
        info.format = "flickr"
    else:
        info.problems.append(
            f"{root} holds neither `annotations/captions_<split>2017.json` (COCO layout) "
            "nor `captions.txt` (Flickr layout)")
        return info
    loaded = {}
    for split in splits:
        if info.format == "coco" and _coco_files(root, split) is None:
            info.problems.append(f"missing annotations/captions_{split}2017.json")
            continue
        try:
            items, missing = load_split(root, split)
        except (OSError, ValueError, KeyError, TypeError, csv.Error) as e:  # csv.Error: a NUL byte, a huge field
            info.problems.append(f"the {split} split cannot be read: {e}")
            continue
        except RecursionError:  # json's parser on an annotation file nested thousands deep
            info.problems.append(f"the {split} split cannot be read: its annotation file is nested too deeply to "
                                 "be a COCO caption file")
            continue
        info.splits[split] = len(items)
        info.n_captions += sum(len(it.captions) for it in items)
        loaded[split] = items
        if not items:
            where = _coco_files(root, split)[1] if info.format == "coco" else "the images folder"
            info.problems.append(f"the {split} split has no images present (looked in {where}; {missing} missing)")
            continue
        problems, notes = missing_report(split_label(root, split), len(items), missing, allow_missing)
        info.problems += problems
        info.notes += notes
    if len(loaded) >= 2:
        (train, train_items), (val, val_items) = list(loaded.items())[:2]
        info.notes += overlap_note(split_label(root, train), split_label(root, val),
                                   shared_images(train_items, val_items), len(val_items))
    return info


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
