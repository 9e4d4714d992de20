"""Captions written into JPEG and PNG metadata: read back with Pillow, other metadata kept, pixels unchanged."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core import imagemeta
from core.imagemeta import MetadataError, read_alt_text, read_caption, write_caption

TEXT = "un café près de l'eau <b> & “quotes”"


def photo(path, fmt, exif=None, **save):
    arr = np.random.default_rng(1).integers(0, 255, (40, 56, 3)).astype(np.uint8)
    img = Image.fromarray(arr)
    if exif is not None:
        save["exif"] = exif.tobytes()
    img.save(path, format=fmt, **save)
    return path


def pixels(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).copy()


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_caption_is_written_read_back_and_pixels_are_identical(tmp_path, fmt, suffix):
    path = photo(tmp_path / f"p{suffix}", fmt)
    before, data_before = pixels(path), path.read_bytes()
    write_caption(path, "first caption")
    write_caption(path, TEXT)  # the second write replaces the first, it does not add a second packet
    assert (pixels(path) == before).all()
    assert read_caption(path) == TEXT and read_alt_text(path) == TEXT
    with Image.open(path) as img:
        xmp = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
        xmp = xmp.decode("utf-8") if isinstance(xmp, bytes) else xmp
        assert xmp.count("AltTextAccessibility>") == 2 and "first caption" not in xmp  # one opening, one closing tag
        if fmt == "PNG":
            assert img.text["Description"] == TEXT
        else:
            assert img.getexif()[0x010E].encode("latin-1").decode("utf-8") == TEXT
    if fmt == "JPEG":  # the compressed image data is the same bytes, not a re-encoding
        assert data_before[data_before.index(b"\xff\xda"):] == path.read_bytes()[path.read_bytes().index(b"\xff\xda"):]


def test_jpeg_keeps_its_other_exif_and_xmp(tmp_path):
    exif = Image.Exif()
    exif[0x0110] = "Camera X"  # Model
    exif.get_ifd(0x8769)[0x9003] = "2021:05:04 10:11:12"  # DateTimeOriginal, in the Exif sub-directory
    path = photo(tmp_path / "p.jpg", "JPEG", exif=exif)
    other = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
             b'<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4"/></rdf:RDF>'
             b'</x:xmpmeta>')
    write_caption(path, "old")  # then another tool's XMP packet takes the place of ours
    segs, rest = imagemeta._jpeg_segments(path.read_bytes())
    segs = [(m, p) if not p.startswith(imagemeta.XMP_JPEG_HEADER) else (m, imagemeta.XMP_JPEG_HEADER + other)
            for m, p in segs]
    path.write_bytes(b"\xff\xd8" + b"".join(imagemeta._segment(m, p) for m, p in segs) + rest)
    write_caption(path, TEXT)
    with Image.open(path) as img:
        ex = img.getexif()
        assert ex[0x0110] == "Camera X" and ex.get_ifd(0x8769)[0x9003] == "2021:05:04 10:11:12"
        assert b'Rating="4"' in img.info["xmp"] or b"Rating>4<" in img.info["xmp"]
    assert read_caption(path) == TEXT


def test_png_keeps_its_other_chunks(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Author", "me")
    path = photo(tmp_path / "p.png", "PNG", pnginfo=info)
    write_caption(path, "ünïcode ✓ caption")  # not Latin-1: goes into an iTXt chunk
    with Image.open(path) as img:
        assert img.text["Author"] == "me" and img.text["Description"] == "ünïcode ✓ caption"


def test_other_formats_and_damaged_files_are_refused_in_plain_words(tmp_path):
    webp = photo(tmp_path / "p.webp", "WEBP")
    with pytest.raises(MetadataError, match="JPEG and PNG"):
        write_caption(webp, "x")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photo(tmp_path / "whole.jpg", "JPEG").read_bytes()[:30])
    with pytest.raises(MetadataError, match="damaged"):
        write_caption(cut, "x")
    assert cut.stat().st_size == 30  # nothing was written
