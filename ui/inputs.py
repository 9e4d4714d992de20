"""Turn uploads (images and zips of images) into `(name, bytes)` items, in memory.

Names are labels only: they are cut to a basename and never used as paths.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path, PurePosixPath

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
UPLOAD_TYPES = [e.lstrip(".") for e in IMAGE_EXTENSIONS] + ["zip"]
MAX_ZIP_MEMBERS = 2000
MAX_MEMBER_BYTES = 50_000_000  # one image
MAX_ZIP_BYTES = 500_000_000  # all images of one zip, uncompressed (zip bombs)
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "samples"


def safe_name(name: str) -> str:
    """The basename of an uploaded or zipped file name, without folders, drive letters or control characters."""
    base = PurePosixPath(str(name).replace("\\", "/")).name
    base = "".join(ch for ch in base if ch.isprintable()).strip().lstrip(".")
    return base[:200] or "unnamed"


def _unique(name: str, seen: set[str]) -> str:
    stem, dot, ext = name.rpartition(".")
    stem, ext = (stem, f".{ext}") if dot else (name, "")
    candidate, n = name, 1
    while candidate in seen:
        n += 1
        candidate = f"{stem} ({n}){ext}"
    seen.add(candidate)
    return candidate


def unzip_images(data: bytes) -> tuple[list[tuple[str, bytes]], str | None]:
    """Image members of a zip (read in memory, other files skipped), and a plain-words problem if any."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError):
        return [], "not a readable zip archive"
    items, total, problem = [], 0, None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        for m in members:
            name = PurePosixPath(m.filename.replace("\\", "/"))
            if name.suffix.lower() not in IMAGE_EXTENSIONS or name.name.startswith("._") or "__MACOSX" in name.parts:
                continue
            if len(items) >= MAX_ZIP_MEMBERS:
                problem = f"only the first {MAX_ZIP_MEMBERS} images of the zip were read"
                break
            try:
                with zf.open(m) as f:
                    content = f.read(MAX_MEMBER_BYTES + 1)  # never trust the sizes in the header
            except (zipfile.BadZipFile, OSError, RuntimeError, ValueError, NotImplementedError) as e:
                items.append((name.name, b""))  # becomes an error row ("empty file")
                problem = f"{name.name} could not be unpacked ({e})"
                continue
            if len(content) > MAX_MEMBER_BYTES:
                problem = f"{name.name} is larger than {MAX_MEMBER_BYTES // 1_000_000} MB and was skipped"
                continue
            total += len(content)
            if total > MAX_ZIP_BYTES:
                problem = f"the zip unpacks to more than {MAX_ZIP_BYTES // 1_000_000} MB; the rest was skipped"
                break
            items.append((name.name, content))
    if not items and problem is None:
        problem = "the zip holds no JPEG, PNG, WebP, BMP or GIF images"
    return items, problem


def read_uploads(files) -> tuple[list[tuple[str, bytes]], list[str]]:
    """`files`: objects with `.name` and `.getvalue()` (Streamlit's UploadedFile). Returns items and problems."""
    items, problems, seen = [], [], set()
    for f in files or []:
        name, data = safe_name(f.name), f.getvalue()
        if name.lower().endswith(".zip"):
            members, problem = unzip_images(data)
            if problem:
                problems.append(f"{name}: {problem}")
            items += [(_unique(safe_name(n), seen), b) for n, b in members]
        else:
            items.append((_unique(name, seen), data))
    return items, problems


def sample_images() -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(SAMPLES_DIR.glob("*.jpg"))]
