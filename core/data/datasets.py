"""Caption datasets (COCO and Flickr layouts): their splits, the images missing from them, and a dataset's
summary for the Train page.

Every path is an argument. A dataset is a sorted list of `ImageCaptions`; images that are missing are
left out and counted, unreadable ones are found (and skipped) when their features are computed.
"""
from __future__ import annotations

import csv
import io
import zlib
from collections import defaultdict
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

COCO_HELP = """\
**Getting COCO-2017** (about 19 GB for the training images):

1. Download `train2017.zip`, `val2017.zip` and `annotations_trainval2017.zip` from https://cocodataset.org/#download
2. Unzip them so that the project folder holds
   - `cocoapi/images/train2017/*.jpg` and `cocoapi/images/val2017/*.jpg`
   - `cocoapi/annotations/captions_train2017.json` and `cocoapi/annotations/captions_val2017.json`
3. Or point the trainer at any folder in COCO layout (`annotations/captions_<split>2017.json` + `images/<split>2017/`)
   or Flickr layout (`captions.txt` with `image,caption` rows + `images/`).
"""


@dataclass
class ImageCaptions:
    path: Path
    captions: list[str]


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
    # annotations/captions_val2017.json (COCO's own layout), else captions_val2017.json beside the images
    for ann in [*sorted((root / "annotations").glob(f"captions_{split}*.json")),
                *sorted(root.glob(f"captions_{split}*.json"))]:
        tag = ann.stem[len("captions_"):]  # e.g. "train2017"
        for image_dir in (root / "images" / tag, root / tag, root / "images"):
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
