"""Turn uploads (images and zips of images) into `(name, source)` items, in memory, within one budget per batch.

Every uploaded file and every file inside a zip gets an item, so every file gets a row: its bytes, or a
`core.data.images.Refused` whose reason becomes the row's error (too large, encrypted, not an image, over the budget).
Names are labels only, never used as paths: the path inside the zip is kept (`cats/1.jpg`), cleaned of `..`,
drive letters and control characters, and prefixed with the zip's name when a batch holds two zips or more.

Zip members are judged from the central directory (declared sizes, compression method, ratio, encryption)
before anything is inflated, so a zip bomb costs neither memory nor CPU.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from core.base.paths import SAMPLES_DIR
from core.data.images import (
    FORMAT_NAMES,
    IMAGE_EXTENSIONS,
    ImageError,
    Refused,
    find_images,
    not_read_reason,
    probe_image,
)

IMAGE_TYPES = [e.lstrip(".") for e in IMAGE_EXTENSIONS] + ["zip"]  # what is read
# The upload widgets take any file: one the widget refused would be greyed out with only a hover tooltip (an
# iPhone's .mov, a RAW file), where read_uploads gives it a row saying why.
UPLOAD_TYPES = None
MAX_FILES = 2000  # rows in one batch
MAX_MEMBER_BYTES = 50_000_000  # one image inside a zip
MAX_BATCH_BYTES = 500_000_000  # all files and unpacked zip members of one batch, as held in memory
MAX_BATCH_PIXELS = 4_000_000_000  # decoded pixels of one batch (JPEGs count at the reduced size they decode at)
MAX_RATIO = 100  # a zip member may unpack to at most 100 times its packed size (photos barely compress)
RATIO_FLOOR = 1_000_000  # ...once it unpacks to more than this: tiny files may compress well
MAX_ZIP_ENTRIES = 20_000  # central-directory entries; more is refused before the zip is parsed
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}  # what zips of photos use; bzip2/LZMA can burn minutes of CPU
_JUNK = {".DS_Store", "Thumbs.db", "desktop.ini"}


def safe_name(name: str) -> str:
    """The basename of an uploaded or zipped file name, without folders, drive letters or control characters."""
    base = PurePosixPath(str(name).replace("\\", "/")).name
    base = "".join(ch for ch in base if ch.isprintable()).strip().lstrip(".")
    return base[:200] or "unnamed"


def safe_path(name: str) -> str:
    """A zip member's path as a label: its folders kept (`cats/1.jpg`), `..`, `.`, drive letters and control
    characters dropped."""
    parts = [safe_name(p) for p in str(name).replace("\\", "/").split("/")
             if p.strip() not in ("", ".", "..") and not (len(p) == 2 and p[1] == ":")]
    return "/".join(p for p in parts if p != "unnamed")[:400] or "unnamed"


def unique_name(name: str, seen: set[str]) -> str:
    """`name`, or `name (2).jpg`, `name (3).jpg`... when `seen` holds it; the name returned is added to `seen`."""
    stem, dot, ext = name.rpartition(".")
    stem, ext = (stem, f".{ext}") if dot and "/" not in ext else (name, "")
    candidate, n = name, 1
    while candidate in seen:
        n += 1
        candidate = f"{stem} ({n}){ext}"
    seen.add(candidate)
    return candidate


@dataclass
class _Budget:
    """What one batch may still hold: rows, bytes in memory, decoded pixels."""
    files: int
    bytes: int
    pixels: int

    @classmethod
    def full(cls) -> "_Budget":
        return cls(MAX_FILES, MAX_BATCH_BYTES, MAX_BATCH_PIXELS)

    def take_bytes(self, n: int) -> str | None:
        if n > self.bytes:
            return (f"skipped: the batch is over its budget of {MAX_BATCH_BYTES // 1_000_000} MB of images; "
                    "caption the rest in another batch")
        self.bytes -= n
        return None

    def admit(self, data: bytes, name: str = "") -> bytes | Refused:
        """The file's bytes if it is an image within the per-image and per-batch limits, else why not."""
        try:
            _, w, h = probe_image(data)
        except ImageError as e:  # an image under any name is read; a file that is not one says what it seems to be
            return Refused((data and not_read_reason(name)) or str(e))
        if w * h > self.pixels:
            return Refused(f"skipped: the batch is over its budget of {MAX_BATCH_PIXELS / 1e9:g} gigapixels; "
                           "caption the rest in another batch")
        self.pixels -= w * h
        return data


def _member_problem(m: zipfile.ZipInfo, path: PurePosixPath) -> str | None:
    """Why a zip member is not unpacked, judged from the central directory alone (nothing inflated)."""
    if m.flag_bits & 0x1:
        return "the file is password-protected (encrypted) in the zip; unpack it yourself and upload the image"
    if path.suffix.lower() == ".zip":
        return "a zip inside the zip is not unpacked; upload it on its own"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return not_read_reason(path.name)
    if m.compress_type not in _METHODS:
        method = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA"}.get(m.compress_type, f"method {m.compress_type}")
        return f"packed with {method}, which is not unpacked here; zip it again with the usual (deflate) compression"
    if m.file_size > MAX_MEMBER_BYTES:
        return f"the image is {m.file_size / 1e6:,.0f} MB; one image may be at most {MAX_MEMBER_BYTES // 1_000_000} MB"
    if m.file_size > RATIO_FLOOR and m.file_size > MAX_RATIO * max(m.compress_size, 1):
        return (f"unpacks to {m.file_size / max(m.compress_size, 1):,.0f} times its packed size (more than "
                f"{MAX_RATIO}x; photos barely compress), which is how zip bombs look")
    return None


def unzip_images(data: bytes, budget: _Budget | None = None) -> list[tuple[str, bytes | Refused]]:
    """Every file of a zip as (path inside the zip, bytes or Refused); a zip that cannot be opened is one Refused."""
    budget = budget or _Budget.full()
    if data.count(b"PK\x01\x02") > MAX_ZIP_ENTRIES:  # central-directory records: counted before any parsing
        return [("", Refused(f"the zip holds more than {MAX_ZIP_ENTRIES:,} files; it was not opened"))]
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return [("", Refused("not a readable zip archive"))]
    items = []
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        for k, m in enumerate(members):
            path = PurePosixPath(m.filename.replace("\\", "/"))
            if path.name.startswith("._") or "__MACOSX" in path.parts or path.name in _JUNK:
                continue  # what macOS and Windows add to a zip by themselves: not the user's files
            if budget.files <= 0:
                items.append(("", Refused(f"{len(members) - k:,} more files were not read: a batch holds at most "
                                          f"{MAX_FILES:,} files")))
                break
            budget.files -= 1
            problem = _member_problem(m, path) or budget.take_bytes(m.file_size)
            if problem:
                items.append((m.filename, Refused(problem)))
                continue
            try:
                with zf.open(m) as f:
                    content = f.read(m.file_size + 1)  # zipfile stops at the declared size and checks the CRC
            except (zipfile.BadZipFile, OSError, RuntimeError, ValueError, NotImplementedError, EOFError) as e:
                items.append((m.filename, Refused(f"the file could not be unpacked from the zip ({e})")))
                continue
            items.append((m.filename, budget.admit(content)))
    if not items:
        items.append(("", Refused(f"the zip holds no files; the images read are {FORMAT_NAMES}")))
    return items


def read_uploads(files) -> tuple[list[tuple[str, bytes | Refused]], list[str]]:
    """`files`: objects with `.name` and `.getvalue()` (Streamlit's UploadedFile).

    Returns one item per file (zips: per member) and a summary of what was refused, for a warning."""
    files = list(files or [])
    items, seen, budget = [], set(), _Budget.full()
    several_zips = sum(safe_name(f.name).lower().endswith(".zip") for f in files) > 1
    for f in files:
        name, base = safe_name(f.name), PurePosixPath(str(f.name).replace("\\", "/")).name
        if base in _JUNK or base.startswith("._"):
            continue  # what macOS and Windows put in a folder by themselves (a folder upload brings them along)
        data = f.getvalue()
        if name.lower().endswith(".zip"):
            for member, source in unzip_images(data, budget):
                label = safe_path(member) if member else ""
                label = f"{name}/{label}" if several_zips and label else (label or name)
                items.append((unique_name(label, seen), source))
        elif budget.files <= 0:
            items.append((unique_name(name, seen), Refused(f"not read: a batch holds at most {MAX_FILES:,} files")))
        else:
            budget.files -= 1
            problem = budget.take_bytes(len(data))
            items.append((unique_name(name, seen), Refused(problem) if problem else budget.admit(data, name)))
        del data  # a zip's packed bytes are not needed once its members are out
    refused = sum(isinstance(s, Refused) for _, s in items)
    problems = [f"{refused} of {len(items)} files cannot be captioned; the error column says why."] if refused else []
    return items, problems


def sample_images() -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in find_images(SAMPLES_DIR, recursive=False)]
