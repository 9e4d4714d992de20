"""ui/: uploads and zips in memory, safe names, thumbnails, heat-maps."""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from core.data.images import Refused
from ui import images, inputs


def jpeg(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


@dataclass
class Upload:
    name: str
    data: bytes

    def getvalue(self) -> bytes:
        return self.data


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_safe_name_never_keeps_folders():
    assert inputs.safe_name("../../etc/passwd.jpg") == "passwd.jpg"
    assert inputs.safe_name("C:\\Users\\me\\cat.png") == "cat.png"
    assert inputs.safe_name("/abs/..") == "unnamed"
    assert inputs.safe_name("..hidden.jpg") == "hidden.jpg"
    assert inputs.safe_name("a\x00b\nc.jpg") == "abc.jpg"


def errors(items) -> dict:
    return {n: s.reason for n, s in items if isinstance(s, Refused)}


def test_zip_is_unpacked_in_memory_every_file_gets_a_row_with_its_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written here
    data = make_zip({"../evil/cat.jpg": jpeg(), "dir/dog.png": jpeg(), "notes.txt": b"hi",
                     "__MACOSX/dir/._dog.png": b"junk", "other/cat.jpg": jpeg((0, 0, 255)), "inner.zip": make_zip({})})
    items, problems = inputs.read_uploads([Upload("photos.zip", data), Upload("cat.jpg", jpeg())])
    assert [n for n, _ in items] == ["evil/cat.jpg", "dir/dog.png", "notes.txt", "other/cat.jpg", "inner.zip", "cat.jpg"]
    assert errors(items).keys() == {"notes.txt", "inner.zip"}
    assert "not an image file (.txt)" in errors(items)["notes.txt"] and "zip inside the zip" in errors(items)["inner.zip"]
    assert problems == ["2 of 6 files cannot be captioned; the error column says why."]
    assert list(tmp_path.iterdir()) == []


def test_rows_trace_back_to_their_zip_and_folder():
    one = make_zip({"cats/1.jpg": jpeg(), "dogs/1.jpg": jpeg()})
    items, _ = inputs.read_uploads([Upload("a.zip", one)])
    assert [n for n, _ in items] == ["cats/1.jpg", "dogs/1.jpg"]
    items, _ = inputs.read_uploads([Upload("a.zip", one), Upload("b.zip", one), Upload("1.jpg", jpeg())])
    assert [n for n, _ in items] == ["a.zip/cats/1.jpg", "a.zip/dogs/1.jpg", "b.zip/cats/1.jpg", "b.zip/dogs/1.jpg",
                                     "1.jpg"]
    assert inputs.safe_path("C:\\x\\..\\..\\evil/\x00.secret.jpg") == "x/evil/secret.jpg"


def test_bad_zip_and_empty_zip_get_a_row_each():
    items, problems = inputs.read_uploads([Upload("x.zip", b"not a zip"), Upload("y.zip", make_zip({}))])
    assert [n for n, _ in items] == ["x.zip", "y.zip"]
    assert "not a readable zip" in errors(items)["x.zip"] and "holds no files" in errors(items)["y.zip"]


def test_encrypted_member_gets_its_own_row():
    data = bytearray(make_zip({"secret.jpg": jpeg(), "ok.jpg": jpeg()}))
    data[6] |= 0x1  # the first member's flags, local header and central directory: "encrypted", as a
    data[data.index(b"PK\x01\x02") + 8] |= 0x1  # password-protected zip marks it (zipfile cannot write one)
    items, _ = inputs.read_uploads([Upload("p.zip", bytes(data))])
    assert [n for n, _ in items] == ["secret.jpg", "ok.jpg"]
    assert "password-protected" in errors(items)["secret.jpg"] and "ok.jpg" not in errors(items)


@pytest.fixture
def never_inflated(monkeypatch):
    """Fails the test if a named member is read: bombs must be refused from the central directory alone."""
    opened = []
    original = zipfile.ZipFile.open

    def spy(self, name, mode="r", *args, **kwargs):
        if mode == "r":
            opened.append(getattr(name, "filename", name))
        return original(self, name, mode, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    return opened


def test_cpu_and_memory_bombs_are_refused_without_inflating(never_inflated, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_MEMBER_BYTES", 3_000_000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("bz.jpg", b"\0" * 1000, compress_type=zipfile.ZIP_BZIP2)
        zf.writestr("lz.jpg", b"\0" * 1000, compress_type=zipfile.ZIP_LZMA)
        zf.writestr("huge.bmp", b"\0" * 4_000_000, compress_type=zipfile.ZIP_STORED)
        zf.writestr("ratio.bmp", b"\0" * 2_000_000, compress_type=zipfile.ZIP_DEFLATED)  # ~1000x
        zf.writestr("ok.jpg", jpeg(), compress_type=zipfile.ZIP_DEFLATED)
    items, _ = inputs.read_uploads([Upload("bombs.zip", buf.getvalue())])
    why = errors(items)
    assert "bzip2" in why["bz.jpg"] and "LZMA" in why["lz.jpg"] and "at most 3 MB" in why["huge.bmp"]
    assert "times its packed size" in why["ratio.bmp"] and "ok.jpg" not in why
    assert never_inflated == ["ok.jpg"]


def test_one_budget_for_the_whole_batch(never_inflated, monkeypatch):
    photo = jpeg(size=(40, 30))
    monkeypatch.setattr(inputs, "MAX_BATCH_BYTES", 2 * len(photo) + 10)
    zips = [Upload(f"{k}.zip", make_zip({"1.jpg": photo, "2.jpg": photo})) for k in "ab"]
    items, _ = inputs.read_uploads(zips + [Upload("3.jpg", photo)])
    assert [isinstance(s, Refused) for _, s in items] == [False, False, True, True, True]
    assert "over its budget of 0 MB" in errors(items)["b.zip/1.jpg"]
    assert never_inflated == ["1.jpg", "2.jpg"]  # the second zip's members were refused by their declared size

    monkeypatch.setattr(inputs, "MAX_BATCH_BYTES", 10**9)
    monkeypatch.setattr(inputs, "MAX_BATCH_PIXELS", 2 * 40 * 30)
    items, _ = inputs.read_uploads(zips)
    assert [isinstance(s, Refused) for _, s in items] == [False, False, True, True]
    assert "gigapixels" in errors(items)["b.zip/2.jpg"]

    monkeypatch.setattr(inputs, "MAX_FILES", 3)
    monkeypatch.setattr(inputs, "MAX_BATCH_PIXELS", 10**9)
    items, _ = inputs.read_uploads(zips + [Upload("3.jpg", photo)])
    assert len(items) == 5 and "1 more files were not read" in errors(items)["b.zip"]
    assert "at most 3 files" in errors(items)["3.jpg"]


def test_a_zip_with_too_many_entries_is_not_parsed(monkeypatch):
    monkeypatch.setattr(inputs, "MAX_ZIP_ENTRIES", 3)
    items, _ = inputs.read_uploads([Upload("many.zip", make_zip({f"{k}.jpg": b"x" for k in range(5)}))])
    assert [n for n, _ in items] == ["many.zip"] and "more than 3 files" in errors(items)["many.zip"]


def test_a_file_that_is_no_image_or_too_big_is_refused_and_not_kept():
    big_png = _png_header(10_001, 10_000)  # 100.01 megapixels, declared in 33 bytes
    items, _ = inputs.read_uploads([Upload("big.png", big_png), Upload("empty.jpg", b""), Upload("ok.jpg", jpeg())])
    assert "100 megapixels" in errors(items)["big.png"] and "empty" in errors(items)["empty.jpg"]
    assert items[2][1] == jpeg()


def _png_header(w: int, h: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", b"")


def test_one_list_of_image_formats():
    from core.data import images

    assert inputs.IMAGE_EXTENSIONS is images.IMAGE_EXTENSIONS
    assert inputs.IMAGE_TYPES == [e.lstrip(".") for e in images.IMAGE_EXTENSIONS] + ["zip"]
    assert {"heic", "heif", "avif"} <= set(inputs.IMAGE_TYPES)
    assert inputs.UPLOAD_TYPES is None  # the widget takes any file; read_uploads says why one is not read
    assert set(images.IMAGE_FORMATS.values()) == set(images.PIL_FORMATS)


def test_sample_images_ship_with_the_app():
    samples = inputs.sample_images()
    assert {n for n, _ in samples} >= {"cat.jpg", "astronaut.jpg"}
    assert all(images.open_image(b) is not None for _, b in samples)


def test_thumbnail_and_overlay():
    url = images.thumbnail_data_url(jpeg(size=(400, 300)))
    assert url.startswith("data:image/jpeg;base64,")
    assert images.thumbnail_data_url(b"not an image") is None and images.thumbnail_data_url(b"") is None
    img = Image.new("RGB", (320, 240), (10, 10, 10))
    att = np.zeros((7, 7), dtype=np.float32)
    att[0, 0] = 0.02  # softmax weights are small: the overlay scales them to their max
    out = images.attention_overlay(img, att, size=160)
    assert out.size == (160, 120)
    px = np.asarray(out)
    assert px[0, 0].sum() > px[-1, -1].sum()  # the attended corner is the bright one
    assert images.attention_overlay(img, np.zeros((7, 7))).size == (224, 168)


def test_iphone_photos_upload_and_unzip_upright(tmp_path):
    from conftest import make_phone_photo

    heic = make_phone_photo(tmp_path / "IMG_0001.HEIC", 6).read_bytes()
    avif = make_phone_photo(tmp_path / "IMG_0002.avif", 6).read_bytes()
    zipped = make_zip({"trip/IMG_0003.heic": heic, "trip/IMG_0004.AVIF": avif, "trip/IMG_0003.MOV": b"\0\0 ftypqt",
                       "trip/DSC_1.NEF": b"raw", "__MACOSX/trip/._IMG_0003.heic": b"junk"})
    items, problems = inputs.read_uploads([Upload("IMG_0001.HEIC", heic), Upload("IMG_0002.avif", avif),
                                           Upload("trip.zip", zipped), Upload("clip.mov", b"\0\0\0 ftypqt  "),
                                           Upload("notes.txt", b"hello"), Upload("photos/.DS_Store", b"\0"),
                                           Upload("photos/._IMG_0001.HEIC", b"\0")])
    names = [n for n, _ in items]
    assert names == ["IMG_0001.HEIC", "IMG_0002.avif", "trip/IMG_0003.heic", "trip/IMG_0004.AVIF",
                     "trip/IMG_0003.MOV", "trip/DSC_1.NEF", "clip.mov", "notes.txt"]  # every file of the user's
    why = errors(items)
    assert set(why) == {"trip/IMG_0003.MOV", "trip/DSC_1.NEF", "clip.mov", "notes.txt"}
    assert "video" in why["clip.mov"] and "video" in why["trip/IMG_0003.MOV"] and "RAW" in why["trip/DSC_1.NEF"]
    assert why["notes.txt"].startswith("not an image file (.txt)") and "HEIC" in why["notes.txt"]
    assert problems == ["4 of 8 files cannot be captioned; the error column says why."]
    for _, source in items[:4]:
        img = images.open_image(source)
        assert img.size == (20, 40) and img.getpixel((10, 5))[0] > 180  # turned upright: red on top


def test_an_image_under_another_name_is_still_read():
    items, _ = inputs.read_uploads([Upload("photo.jpeg.download", jpeg())])
    assert not errors(items)
