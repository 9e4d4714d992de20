"""A caption written into an image's metadata (or an XMP sidecar beside it), never harming what a person wrote.

Reading and writing go through exiv2 (pyexiv2), the library digiKam, darktable and GIMP use: it re-lays out EXIF
with the IFD1 thumbnail, re-encodes the MakerNotes of the cameras it knows, and keeps XMP namespace prefixes.
A JPEG gets XMP `dc:description` + `Iptc4xmpCore:AltTextAccessibility` (IPTC's alt text) and EXIF
`ImageDescription`; a PNG gets the XMP and its `Description` text chunk. The pixels are not touched.

What this module promises (issue 20):
- A description a person wrote (any of those fields, any language) is replaced only when asked (`existing=
  "overwrite"`); the replaced text is then kept in the same XMP as `capt:PreviousDescription` / `PreviousAltText` /
  `PreviousExifDescription` / `PreviousPngDescription`. `capt:Caption` records what this program wrote, so a later
  run tells its own caption from a person's text.
- The file must be the one that was captioned (`expect`, a FileIdentity), complete, and unchanged between reading
  it and replacing it (size, mtime_ns, SHA-256 of what was read); otherwise it is left alone with a MetadataError.
- Write-protected files are refused; a symlink is written through (the link stays a link); a hard-linked file, or
  another user's, is rewritten in place after a verified backup copy (the links stay one file, the owner stays);
  otherwise a temporary copy replaces it atomically, with the original's mode, owner/group, extended attributes
  and mtime.
- An opaque MakerNote of a camera exiv2 does not know would be moved by a growing EXIF block and its internal
  offsets would then point at other data: such files get the XMP only (EXIF untouched).
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from core.base.files import atomic_write_bytes

METADATA_SUFFIXES = (".jpg", ".jpeg", ".png")
CAPT_NS = "https://captioner.invalid/ns/1.0/"  # our own XMP namespace (.invalid: a domain no one can own)
CAPT = "capt"
X_DEFAULT = 'lang="x-default"'
DESCRIPTION, ALT_TEXT = "Xmp.dc.description", "Xmp.iptc.AltTextAccessibility"
EXIF_DESCRIPTION = "Exif.Image.ImageDescription"
IPTC_CAPTION = "Iptc.Application2.Caption"  # IPTC IIM Caption-Abstract (Photoshop, older catalogues): read, and
# replaced only where it exists (MWG: keep it in step with dc:description), so older tools do not show stale text
OURS = f"Xmp.{CAPT}.Caption"
PREVIOUS = {DESCRIPTION: f"Xmp.{CAPT}.PreviousDescription", ALT_TEXT: f"Xmp.{CAPT}.PreviousAltText",
            EXIF_DESCRIPTION: f"Xmp.{CAPT}.PreviousExifDescription", "png": f"Xmp.{CAPT}.PreviousPngDescription",
            IPTC_CAPTION: f"Xmp.{CAPT}.PreviousIptcCaption"}
HEAD_BYTES = 1 << 16  # the content-hash prefix of a FileIdentity
BACKUP = ".caption-backup"  # <.name>.caption-backup: the original of a hard-linked file while it is rewritten in place
# EXIF groups exiv2 names for the standard directories; any other group is a MakerNote exiv2 decoded (and re-encodes)
_STANDARD_EXIF = {"Image", "Photo", "Thumbnail", "GPSInfo", "Iop", "MakerNote", "Image2", "Image3", "SubImage1"}
EMPTY_XMP = (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
             b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about=""/>'
             b'</rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


class MetadataError(ValueError):
    """The caption cannot be written into this file; the message says why in plain words. Nothing was changed."""


class KeptDescription(MetadataError):
    """The file holds a description a person wrote, and "skip" keeps it."""


def _exiv2():
    try:
        import pyexiv2  # function-local: the pages import core.caption.library without needing the native library loaded
    except ImportError as e:
        raise MetadataError(f"pyexiv2 is not installed ({e}); run: pip install -r requirements.txt") from None

    if not getattr(_exiv2, "ready", False):
        pyexiv2.registerNs(CAPT_NS, CAPT)
        pyexiv2.set_log_level(3)  # warnings (common in camera files) are not errors; errors still raise
        _exiv2.ready = True
    return pyexiv2


# ------------------------------------------------------------------------------------------ identity

@dataclass(frozen=True)
class FileIdentity:
    """Which file content a caption belongs to: size, mtime and a hash of the first 64 KiB (cheap to take), and
    ctime + inode, which change with any write or replacement even when a copy keeps size and mtime."""
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    head: str

    @classmethod
    def of_bytes(cls, st: os.stat_result, data: bytes) -> "FileIdentity":
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                   hashlib.sha256(data[:HEAD_BYTES]).hexdigest()[:32])


def identity(path: Path | str) -> FileIdentity:
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        return FileIdentity.of_bytes(st, f.read(HEAD_BYTES))


# ------------------------------------------------------------------------------------------- reading

def _open(data: bytes):
    try:
        return _exiv2().ImageData(data)
    except (RuntimeError, ValueError) as e:
        raise MetadataError(f"its metadata cannot be read ({e})") from None


def _read(img) -> tuple[dict, dict]:
    """(EXIF + IPTC, XMP) of an open pyexiv2 image; text a camera stored in another code page is read as Latin-1."""
    out = []
    for reader in (img.read_exif, img.read_xmp, img.read_iptc):
        try:
            out.append(reader())
        except UnicodeDecodeError:
            out.append(reader(encoding="latin-1"))
    return out[0] | out[2], out[1]


def _alt(value) -> dict[str, str]:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if isinstance(v, str) and v.strip()}
    return {X_DEFAULT: value} if isinstance(value, str) and value.strip() else {}


def descriptions(data: bytes) -> dict[str, str]:
    """Every description field the writer touches that holds text, whatever wrote it: {"field [lang]": text}."""
    img = _open(data)
    try:
        exif, xmp = _read(img)
        comment = img.read_comment() if data.startswith(b"\x89PNG") else ""
    except (RuntimeError, ValueError) as e:
        raise MetadataError(f"its metadata cannot be read ({e})") from None
    finally:
        img.close()
    found = {f"{key} [{lang.split('=')[-1].strip(chr(34))}]": text
             for key in (DESCRIPTION, ALT_TEXT) for lang, text in _alt(xmp.get(key)).items()}
    for key in (EXIF_DESCRIPTION, IPTC_CAPTION):
        if str(exif.get(key, "")).strip("\x00 "):
            found[key] = str(exif[key]).strip("\x00 ")
    if comment and comment.strip():
        found["PNG Description"] = comment
    ours = xmp.get(OURS)
    return {k: v for k, v in found.items() if not (ours and v.strip() == ours.strip())} | (
        {"ours": ours} if ours else {})


def person_descriptions(data: bytes) -> dict[str, str]:
    """The descriptions this program did not write (a person's, a camera's, another tool's)."""
    return {k: v for k, v in descriptions(data).items() if k != "ours"}


def metadata_bytes(path: Path | str) -> bytes:
    """The file's metadata without its image data (a JPEG's segments before the scan, a PNG's chunks but IDAT):
    what the skip check of a rerun needs, read without reading the megabytes of every photo."""
    with open(path, "rb") as f:
        sig = f.read(8)
        if sig[:2] == b"\xff\xd8":
            out, pos = [b"\xff\xd8"], 2
            while True:
                f.seek(pos)
                hdr = f.read(4)
                if len(hdr) < 4 or hdr[0] != 0xFF:
                    break
                if hdr[1] == 0xFF:  # a fill byte
                    pos += 1
                    continue
                if hdr[1] in (0xDA, 0xD9):  # the scan (image data) starts: all metadata came before it
                    break
                (n,) = struct.unpack(">H", hdr[2:])
                out.append(hdr + f.read(n - 2))
                pos += 2 + n
            return b"".join(out) + b"\xff\xd9"
        if sig == b"\x89PNG\r\n\x1a\n":
            out = [sig]
            while len(hdr := f.read(8)) == 8:
                n, kind = struct.unpack(">I4s", hdr)
                if kind == b"IDAT":
                    f.seek(n + 4, os.SEEK_CUR)
                    continue
                out.append(hdr + f.read(n + 4))
                if kind == b"IEND":
                    break
            return b"".join(out)
        f.seek(0)
        return f.read()


def _opaque_makernote(exif: dict) -> bool:
    groups = {k.split(".")[1] for k in exif if k.startswith("Exif.")}
    return "Exif.Photo.MakerNote" in exif and not groups - _STANDARD_EXIF


# ------------------------------------------------------------------------------------------- writing

def with_caption(data: bytes, text: str, existing: str = "overwrite") -> bytes:
    """The bytes of a JPEG or PNG file (or an XMP sidecar packet) with `text` as description and alt text.

    existing: "skip" raises KeptDescription when a description not written by us is there; "overwrite" replaces
    it, keeping the old text under capt:Previous*; "append" adds `text` after the current description."""
    kind = "jpeg" if data.startswith(b"\xff\xd8") else "png" if data.startswith(b"\x89PNG\r\n\x1a\n") else (
        "xmp" if b"<x:xmpmeta" in data[:4096] or b"<rdf:RDF" in data[:4096] else None)
    if kind is None:
        raise MetadataError("captions are written into JPEG and PNG files only; use a .txt sidecar for other formats")
    if kind in ("jpeg", "png"):
        _check_complete(data)
    img = _open(data)
    try:
        exif, xmp = _read(img)
        comment = img.read_comment() if kind == "png" else ""
        person = person_descriptions(data)
        if person and existing == "skip":
            raise KeptDescription("it already has a description (" + ", ".join(sorted(person)) + "); kept. "
                                  "Use --existing overwrite to replace it (the old text is kept in its XMP)")
        if existing == "append":
            old = (_alt(xmp.get(DESCRIPTION)).get(X_DEFAULT) or str(exif.get(EXIF_DESCRIPTION, "")).strip("\x00 ")
                   or comment or "").strip()
            text = f"{old} {text}" if old else text
        changes: dict = {DESCRIPTION: {X_DEFAULT: text}, ALT_TEXT: {X_DEFAULT: text}, OURS: text}
        ours = xmp.get(OURS)
        for key in (DESCRIPTION, ALT_TEXT):  # a person's words survive in our namespace, every language of them
            old = _alt(xmp.get(key))
            if old and not (ours and set(old.values()) == {ours}):
                changes[PREVIOUS[key]] = old
        for key in (EXIF_DESCRIPTION, IPTC_CAPTION):
            old = str(exif.get(key, "")).strip("\x00 ")
            if old and old != ours:
                changes[PREVIOUS[key]] = old
        if comment and comment.strip() and comment != ours:
            changes[PREVIOUS["png"]] = comment
        img.modify_xmp(changes)
        if kind == "jpeg" and not _opaque_makernote(exif):
            img.modify_exif({EXIF_DESCRIPTION: text})
        if IPTC_CAPTION in exif:
            img.modify_iptc({IPTC_CAPTION: text})
        if kind == "png":
            img.modify_comment(text)  # exiv2 writes it as the PNG `Description` text chunk
        out = img.get_bytes()
    except (RuntimeError, ValueError) as e:
        if isinstance(e, MetadataError):
            raise
        raise MetadataError(f"exiv2 could not write its metadata ({e})") from None
    finally:
        img.close()
    if kind in ("jpeg", "png") and _image_data(out) != _image_data(data):  # the pixels, byte for byte, or nothing
        raise MetadataError("exiv2 changed the image data; left unchanged")
    if kind == "jpeg":
        _open(out).close()  # what goes to disk reads back
    return out


def _check_complete(data: bytes) -> None:
    """A file another program is still saving is refused: it must decode to the end of its image data (a JPEG at
    1/8 scale, which still reads every coded byte; a PNG's chunks through IEND with their checksums)."""
    from PIL import Image, ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise MetadataError("Pillow is set to accept truncated images; refusing to judge whether the file is whole")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "PNG":
                img.verify()
            else:
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
    except Image.DecompressionBombError as e:
        raise MetadataError(f"it is too large to check that it is whole ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise MetadataError(f"the file is incomplete or damaged ({e}); is another program still saving it?") from None


def _image_data(data: bytes) -> bytes:
    """The coded pixels: a JPEG from its first scan on, a PNG's IHDR, PLTE, tRNS and IDAT chunks."""
    if data.startswith(b"\x89PNG"):
        out, pos = [], 8
        while pos + 8 <= len(data):
            n, kind = struct.unpack(">I4s", data[pos:pos + 8])
            if kind in (b"IHDR", b"PLTE", b"tRNS", b"IDAT"):
                out.append(data[pos:pos + 12 + n])
            pos += 12 + n
        return b"".join(out)
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        if data[pos + 1] == 0xFF:
            pos += 1
        elif data[pos + 1] == 0xDA:
            return data[pos:]
        else:
            pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    raise MetadataError("the JPEG file is damaged (no image data)")


def _read_stable(path: Path) -> tuple[bytes, os.stat_result]:
    """The file's bytes, refused when its size or mtime moved while it was read (another program saving it)."""
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        data = f.read()
        after = os.fstat(f.fileno())
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(data) != after.st_size:
        raise MetadataError("the file changed while it was read (another program is saving it); left unchanged")
    return data, after


def _target(path: Path) -> Path:
    """Where to write: a symlink's target (the link itself stays), refused when that is not a regular file."""
    target = Path(os.path.realpath(path))
    if not target.is_file():
        raise MetadataError("it is not a regular file; left unchanged")
    return target


def write_caption(path: Path | str, text: str, *, existing: str = "overwrite", expect: FileIdentity | None = None,
                  keep_mtime: bool = True) -> None:
    """Write `text` into the image file's metadata, or raise MetadataError with the file unchanged.

    expect: the identity of the file when it was captioned; a different file (replaced mid-run) is refused."""
    target = _target(Path(path))
    st = os.stat(target)
    if not st.st_mode & 0o222:
        raise MetadataError("the file is write-protected (read-only); left unchanged")
    if (target.parent / f".{target.name}{BACKUP}").exists():
        raise MetadataError(f"an interrupted write left .{target.name}{BACKUP} beside it; check it and remove it "
                            "first; left unchanged")
    data, st = _read_stable(target)
    if expect is not None and FileIdentity.of_bytes(st, data) != expect:
        raise MetadataError("the photo changed after it was captioned; left unchanged (run again to caption it)")
    _replace_checked(target, data, st, with_caption(data, text, existing), keep_mtime)


def write_xmp_sidecar(image: Path | str, text: str, *, existing: str = "overwrite", full_name: bool = False) -> Path:
    """Write `text` into the image's XMP sidecar, merging into one that exists, without touching the image.

    An existing `photo.jpg.xmp` (darktable, digiKam) or `photo.xmp` (Lightroom, Capture One) is edited; else
    `photo.jpg.xmp` is created: it cannot collide between photo.jpg and photo.png. full_name: another image
    shares this one's stem (a.jpg + a.png), so only `photo.jpg.xmp` is this image's."""
    image = Path(image)
    side = xmp_sidecar_path(image, full_name)
    if side.exists():
        target = _target(side)
        if not os.stat(target).st_mode & 0o222:
            raise MetadataError(f"the XMP sidecar {side.name} is write-protected; left unchanged")
        data, st = _read_stable(target)
        _replace_checked(target, data, st, with_caption(data, text, existing), keep_mtime=False)
    else:
        atomic_write_bytes(side, with_caption(EMPTY_XMP, text, existing))
    return side


RAW_SUFFIXES = (".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2", ".pef",
                ".dng", ".srw", ".x3f", ".3fr", ".iiq", ".rwl", ".erf", ".mrw", ".kdc")


def xmp_sidecar_path(image: Path, full_name: bool = False) -> Path:
    """photo.jpg.xmp if it exists; else photo.xmp if it exists and is not a raw file's (Lightroom writes IMG_1.xmp
    for IMG_1.CR2: the camera's IMG_1.JPG beside it must not take it over); else photo.jpg.xmp, to be created."""
    own = image.with_name(image.name + ".xmp")
    if own.exists() or own.is_symlink() or full_name:
        return own
    short = image.with_suffix(".xmp")
    if (short.exists() or short.is_symlink()) and not any(
            image.with_suffix(ext).exists() for raw in RAW_SUFFIXES for ext in (raw, raw.upper())):
        return short
    return own


def read_xmp_sidecar(image: Path | str, full_name: bool = False) -> dict[str, str]:
    """The descriptions in the image's XMP sidecar ({} when there is none or it cannot be read)."""
    side = xmp_sidecar_path(Path(image), full_name)
    if not side.is_file():
        return {}
    try:
        return descriptions(side.read_bytes())
    except (OSError, MetadataError):
        return {}


def _unchanged(target: Path, st: os.stat_result, data: bytes) -> bool:
    now = os.stat(target)
    if (now.st_size, now.st_mtime_ns, now.st_ino) != (st.st_size, st.st_mtime_ns, st.st_ino):
        return False
    with open(target, "rb") as f:
        return hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()


def _replace_checked(target: Path, data: bytes, st: os.stat_result, new: bytes, keep_mtime: bool) -> None:
    """Put `new` in place of `data` at `target`, only if the file on disk is still exactly `data`."""
    if not _unchanged(target, st, data):
        raise MetadataError("another program changed the file while its caption was written; left unchanged")
    times = (st.st_atime_ns, st.st_mtime_ns) if keep_mtime else None
    # a hard link (os.replace would split it), or a file of another user in a shared folder (a new file would be
    # ours, not theirs): written in place, a verified copy kept beside it meanwhile
    not_ours = hasattr(os, "geteuid") and os.geteuid() not in (0, st.st_uid)
    if st.st_nlink > 1 or not_ours:
        backup = target.parent / f".{target.name}{BACKUP}"
        atomic_write_bytes(backup, data, like=st)  # as private as the photo
        if backup.read_bytes() != data:
            backup.unlink()
            raise MetadataError("the safety copy could not be verified; left unchanged")
        with open(target, "r+b") as f:
            f.write(new)
            f.truncate(len(new))
            f.flush()
            os.fsync(f.fileno())
        if times:
            os.utime(target, ns=times)
        backup.unlink()
        return
    try:
        atomic_write_bytes(target, new, like=st, times=times, still=lambda: _unchanged(target, st, data))
    except InterruptedError:
        raise MetadataError("another program changed the file while its caption was written; left unchanged") from None


# ------------------------------------------------------------------------------------------- public reading

def can_write(path: Path | str) -> bool:
    return Path(path).suffix.lower() in METADATA_SUFFIXES


def read_alt_text(path: Path | str) -> str | None:
    """The x-default XMP alt text (`Iptc4xmpCore:AltTextAccessibility`) of a JPEG or PNG file, or None."""
    try:
        img = _open(metadata_bytes(path))
    except (OSError, MetadataError):
        return None
    try:
        return _alt(_read(img)[1].get(ALT_TEXT)).get(X_DEFAULT)
    except (RuntimeError, ValueError):
        return None
    finally:
        img.close()


def read_caption(path: Path | str) -> str | None:
    """The description written into a JPEG or PNG file (XMP first, then EXIF / PNG text), or None."""
    try:
        data = metadata_bytes(path)
        img = _open(data)
    except (OSError, MetadataError):
        return None
    try:
        exif, xmp = _read(img)
        comment = img.read_comment() if data.startswith(b"\x89PNG") else ""
    except (RuntimeError, ValueError):
        return None
    finally:
        img.close()
    alt = _alt(xmp.get(DESCRIPTION))
    return (alt.get(X_DEFAULT) or next(iter(alt.values()), None) or str(exif.get(EXIF_DESCRIPTION, "")).strip("\x00 ")
            or str(exif.get(IPTC_CAPTION, "")).strip() or comment or None)


def has_person_description(path: Path | str) -> bool:
    """Whether the file holds a description this program did not write; an unreadable file counts as one."""
    try:
        return bool(person_descriptions(metadata_bytes(path)))
    except (OSError, MetadataError):
        return True


def has_description(path: Path | str) -> bool:
    """Whether any description field the writer touches holds text (ours or not): "skip" leaves such files."""
    try:
        return bool(descriptions(metadata_bytes(path)))
    except (OSError, MetadataError):
        return False
