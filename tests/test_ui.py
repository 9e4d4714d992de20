"""ui/: uploads and zips in memory, safe names, thumbnails, heat-maps."""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np
from PIL import Image

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


def test_zip_is_unpacked_in_memory_with_basenames(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written here
    data = make_zip({"../evil/cat.jpg": jpeg(), "dir/dog.png": jpeg(), "notes.txt": b"hi",
                     "__MACOSX/dir/._dog.png": b"junk", "other/cat.jpg": jpeg((0, 0, 255))})
    items, problems = inputs.read_uploads([Upload("photos.zip", data), Upload("cat.jpg", jpeg())])
    assert [n for n, _ in items] == ["cat.jpg", "dog.png", "cat (2).jpg", "cat (3).jpg"]
    assert problems == [] and list(tmp_path.iterdir()) == []


def test_bad_zip_and_empty_zip_are_reported():
    items, problems = inputs.read_uploads([Upload("x.zip", b"not a zip"), Upload("y.zip", make_zip({"a.txt": b"1"}))])
    assert items == [] and "not a readable zip" in problems[0] and "no JPEG" in problems[1]


def test_zip_member_too_large_is_skipped(monkeypatch):
    monkeypatch.setattr(inputs, "MAX_MEMBER_BYTES", 100)
    items, problem = inputs.unzip_images(make_zip({"big.jpg": b"x" * 1000, "ok.jpg": b"y" * 10}))
    assert [n for n, _ in items] == ["ok.jpg"] and "big.jpg" in problem


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
