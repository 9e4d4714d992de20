"""Camera-like EXIF built byte by byte (Pillow cannot write an IFD1 thumbnail or a MakerNote with offsets)."""
from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image


def tiny_jpeg(seed: int = 0, size=(8, 8)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (*size, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def _ifd(entries, at: int, next_ifd: int) -> bytes:
    """An IFD at offset `at` with its out-of-line values right after it. entries: (tag, type, count, bytes)."""
    data_at = at + 2 + 12 * len(entries) + 4
    head, data = struct.pack("<H", len(entries)), b""
    for tag, typ, count, val in entries:
        if len(val) <= 4:
            head += struct.pack("<HHI", tag, typ, count) + val.ljust(4, b"\0")
        else:
            head += struct.pack("<HHII", tag, typ, count, data_at + len(data))
            data += val + b"\0" * (len(val) % 2)
    return head + struct.pack("<I", next_ifd) + data


def _size(entries) -> int:
    return 2 + 12 * len(entries) + 4 + sum(len(v) + len(v) % 2 for *_, v in entries if len(v) > 4)


CANON_IMAGE_TYPE = b"IMG:EOS TEST JPEG\0"


def camera_exif(thumb: bytes, description: bytes | None = None, make: bytes = b"Canon") -> bytes:
    """EXIF (APP1 payload) as a camera writes it: IFD0 (Make, description), an Exif IFD with a Canon MakerNote
    (an IFD whose value offsets count from the TIFF header, so moving it without re-encoding breaks it) and
    IFD1 with a JPEG thumbnail."""
    ifd0 = [(0x010F, 2, len(make) + 1, make + b"\0")]
    if description is not None:
        ifd0.insert(0, (0x010E, 2, len(description) + 1, description + b"\0"))
    ifd0.append((0x8769, 4, 1, b"\0" * 4))
    exif_at = 8 + _size(ifd0)
    mk_at = exif_at + 2 + 12 + 4  # the Exif IFD has one entry, the MakerNote, whose value follows it
    mk_entries = [(0x0006, 2, len(CANON_IMAGE_TYPE), CANON_IMAGE_TYPE)]
    makernote = _ifd(mk_entries, mk_at, 0)
    ifd1_at = mk_at + len(makernote) + len(makernote) % 2
    thumb_at = ifd1_at + 2 + 12 * 2 + 4
    ifd0[-1] = (0x8769, 4, 1, struct.pack("<I", exif_at))
    tiff = (b"II*\0" + struct.pack("<I", 8) + _ifd(ifd0, 8, ifd1_at)
            + _ifd([(0x927C, 7, len(makernote), makernote)], exif_at, 0))
    tiff = tiff.ljust(ifd1_at, b"\0")
    tiff += _ifd([(0x0201, 4, 1, struct.pack("<I", thumb_at)), (0x0202, 4, 1, struct.pack("<I", len(thumb)))],
                 ifd1_at, 0) + thumb
    return b"Exif\0\0" + tiff


def jpeg_with_exif(exif: bytes, seed: int = 1) -> bytes:
    body = tiny_jpeg(seed, (40, 56))
    return body[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + body[2:]
