"""A caption written into an image file's own metadata, as alt text and description, without touching the pixels.

JPEG: EXIF `ImageDescription` (built with Pillow's Exif, other EXIF tags kept) and an XMP packet, each an APP1
segment. PNG: a `Description` text chunk (tEXt, or iTXt when the text is not Latin-1) and the XMP packet in an
iTXt chunk. XMP carries `dc:description` and `Iptc4xmpCore:AltTextAccessibility` (IPTC's alt text field); an
existing XMP packet is edited, not replaced. The compressed image data is copied byte for byte (no re-encoding),
and the file is replaced atomically (a temporary copy, then os.replace), so an interruption never leaves half a file.
"""
from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

from PIL import Image

from .files import atomic_write_bytes

METADATA_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_DESCRIPTION = 0x010E  # EXIF tag
XMP_JPEG_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
EXIF_JPEG_HEADER = b"Exif\x00\x00"
XMP_PNG_KEY = b"XML:com.adobe.xmp"
NS = {"x": "adobe:ns:meta/", "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
      "dc": "http://purl.org/dc/elements/1.1/", "Iptc4xmpCore": "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/",
      "xml": "http://www.w3.org/XML/1998/namespace"}
FIELDS = ("dc:description", "Iptc4xmpCore:AltTextAccessibility")
for _prefix, _uri in NS.items():
    if _prefix != "xml":
        ET.register_namespace(_prefix, _uri)


class MetadataError(ValueError):
    """The caption cannot be written into this file; the message says why in plain words."""


def _q(name: str) -> str:
    prefix, local = name.split(":")
    return f"{{{NS[prefix]}}}{local}"


# ----------------------------------------------------------------------------------------------- XMP

def xmp_packet(text: str, existing: bytes | None = None) -> bytes:
    """An XMP packet whose description and alt text are `text`; other properties of `existing` are kept."""
    root = None
    if existing:
        try:
            root = ET.fromstring(existing.strip(b"\x00 \r\n\t").split(b"?>", 1)[-1].rsplit(b"<?xpacket", 1)[0])
        except ET.ParseError:
            root = None  # an unreadable packet is replaced
    if root is None or root.find(_q("rdf:RDF")) is None and root.tag != _q("rdf:RDF"):
        root = ET.Element(_q("x:xmpmeta"))
        ET.SubElement(root, _q("rdf:RDF"))
    rdf = root if root.tag == _q("rdf:RDF") else root.find(_q("rdf:RDF"))
    desc = rdf.find(_q("rdf:Description"))
    if desc is None:
        desc = ET.SubElement(rdf, _q("rdf:Description"), {_q("rdf:about"): ""})
    for name in FIELDS:
        for d in rdf.findall(_q("rdf:Description")):  # the field may sit in any Description block, as element or attribute
            for old in d.findall(_q(name)):
                d.remove(old)
            d.attrib.pop(_q(name), None)
        alt = ET.SubElement(ET.SubElement(desc, _q(name)), _q("rdf:Alt"))
        ET.SubElement(alt, _q("rdf:li"), {_q("xml:lang"): "x-default"}).text = text
    body = ET.tostring(root, encoding="unicode")
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>' + body + '<?xpacket end="w"?>').encode("utf-8")


def xmp_description(packet: bytes | str | None, name: str = "dc:description") -> str | None:
    """The x-default text of an XMP language-alternative property (`dc:description` by default), or None."""
    if not packet:
        return None
    raw = packet.encode("utf-8") if isinstance(packet, str) else packet
    try:
        root = ET.fromstring(raw.strip(b"\x00 \r\n\t").split(b"?>", 1)[-1].rsplit(b"<?xpacket", 1)[0])
    except ET.ParseError:
        return None
    li = root.find(f".//{_q(name)}/{_q('rdf:Alt')}/{_q('rdf:li')}")
    return li.text if li is not None else None


# ---------------------------------------------------------------------------------------------- JPEG

def _jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Marker segments before the image data [(marker, payload)], and the rest of the file from SOS on."""
    if data[:2] != b"\xff\xd8":
        raise MetadataError("not a JPEG file")
    segments, pos = [], 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise MetadataError("the JPEG file is damaged (bad marker)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: everything from here on is image data, copied unchanged
            return segments, data[pos:]
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2 or pos + 2 + length > len(data):
            raise MetadataError("the JPEG file is damaged (a segment runs past the end)")
        segments.append((marker, data[pos + 4:pos + 2 + length]))
        pos += 2 + length
    raise MetadataError("the JPEG file is damaged (no image data)")


def _segment(marker: int, payload: bytes) -> bytes:
    if len(payload) + 2 > 0xFFFF:
        raise MetadataError("the metadata is too large for a JPEG segment")
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _jpeg_with_caption(data: bytes, text: str) -> bytes:
    segments, rest = _jpeg_segments(data)
    old_exif = next((p for m, p in segments if m == 0xE1 and p.startswith(EXIF_JPEG_HEADER)), None)
    old_xmp = next((p[len(XMP_JPEG_HEADER):] for m, p in segments if m == 0xE1 and p.startswith(XMP_JPEG_HEADER)), None)
    exif = Image.Exif()
    if old_exif:
        exif.load(old_exif)
        for ifd in (0x8769, 0x8825):  # load the Exif and GPS sub-directories so that tobytes() writes them back
            exif.get_ifd(ifd)
    exif[IMAGE_DESCRIPTION] = text.encode("utf-8")  # EXIF says ASCII; UTF-8 is what readers expect today
    kept = [(m, p) for m, p in segments if not (m == 0xE1 and (p.startswith(EXIF_JPEG_HEADER) or p.startswith(XMP_JPEG_HEADER)))]
    # APP0 (JFIF) must stay first; EXIF and XMP follow it
    head = [s for s in kept if s[0] == 0xE0][:1]
    tail = [s for s in kept if s not in head]
    new = head + [(0xE1, exif.tobytes()), (0xE1, XMP_JPEG_HEADER + xmp_packet(text, old_xmp))] + tail
    return b"\xff\xd8" + b"".join(_segment(m, p) for m, p in new) + rest


# ----------------------------------------------------------------------------------------------- PNG

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if not data.startswith(PNG_SIGNATURE):
        raise MetadataError("not a PNG file")
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if pos + 12 + length > len(data):
            raise MetadataError("the PNG file is damaged (a chunk runs past the end)")
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
        if kind == b"IEND":
            return chunks
    raise MetadataError("the PNG file is damaged (no end chunk)")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _itxt(key: bytes, text: bytes) -> bytes:
    return key + b"\x00\x00\x00\x00\x00" + text  # no compression, no language, no translated keyword


def _png_text_key(kind: bytes, body: bytes) -> bytes | None:
    return body.split(b"\x00", 1)[0] if kind in (b"tEXt", b"iTXt", b"zTXt") else None


def _itxt_text(body: bytes) -> bytes | None:
    """The text of an iTXt chunk: keyword, 0, compressed flag, method, language, 0, translated keyword, 0, text."""
    key, rest = body.split(b"\x00", 1)
    compressed, rest = rest[:1] == b"\x01", rest[2:]
    text = rest.split(b"\x00", 2)[-1]
    try:
        return zlib.decompress(text) if compressed else text
    except zlib.error:
        return None


def _png_with_caption(data: bytes, text: str) -> bytes:
    chunks = _png_chunks(data)
    old_xmp = next((_itxt_text(b) for k, b in chunks if k == b"iTXt" and _png_text_key(k, b) == XMP_PNG_KEY), None)
    kept = [(k, b) for k, b in chunks if _png_text_key(k, b) not in (b"Description", XMP_PNG_KEY)]
    try:
        description = (b"tEXt", b"Description\x00" + text.encode("latin-1"))
    except UnicodeEncodeError:
        description = (b"iTXt", _itxt(b"Description", text.encode("utf-8")))
    new = [description, (b"iTXt", _itxt(XMP_PNG_KEY, xmp_packet(text, old_xmp)))]
    first_idat = next(i for i, (k, _) in enumerate(kept) if k in (b"IDAT", b"IEND"))
    kept[first_idat:first_idat] = new
    return PNG_SIGNATURE + b"".join(_chunk(k, b) for k, b in kept)


# ------------------------------------------------------------------------------------------- public

def can_write(path: Path | str) -> bool:
    return Path(path).suffix.lower() in METADATA_SUFFIXES


def with_caption(data: bytes, text: str) -> bytes:
    """The bytes of a JPEG or PNG file with `text` as its description and alt text; image data unchanged."""
    if data.startswith(b"\xff\xd8"):
        return _jpeg_with_caption(data, text)
    if data.startswith(PNG_SIGNATURE):
        return _png_with_caption(data, text)
    raise MetadataError("captions are written into JPEG and PNG files only; use a .txt sidecar for other formats")


def write_caption(path: Path | str, text: str) -> None:
    """Write `text` into the image file's metadata: a temporary copy, then an atomic replace."""
    path = Path(path)
    atomic_write_bytes(path, with_caption(path.read_bytes(), text))


def read_alt_text(path: Path | str) -> str | None:
    """The XMP alt text (`Iptc4xmpCore:AltTextAccessibility`) of a JPEG or PNG file, or None.

    Unlike the description, which cameras fill with their own words, only captioning tools write this."""
    try:
        with Image.open(path) as img:
            return xmp_description(img.info.get("xmp") or img.info.get("XML:com.adobe.xmp"), FIELDS[1])
    except (OSError, ValueError, SyntaxError):
        return None


def read_caption(path: Path | str) -> str | None:
    """The description written into a JPEG or PNG file (XMP first, then EXIF / PNG text), or None."""
    try:
        with Image.open(path) as img:
            info = img.info
            found = xmp_description(info.get("xmp") or info.get("XML:com.adobe.xmp"))
            if found:
                return found
            if img.format == "PNG" and img.text.get("Description"):
                return img.text["Description"]
            desc = img.getexif().get(IMAGE_DESCRIPTION)
    except (OSError, ValueError, SyntaxError):
        return None
    if isinstance(desc, bytes):
        desc = desc.rstrip(b"\x00").decode("utf-8", "replace")
    return desc or None

