"""In a real browser: an iPhone photo (HEIC, turned by its EXIF) and a Live Photo's movie are both taken by the
upload box; the photo is captioned, the movie gets a row saying what it is (the widget used to grey both out
with only a hover tooltip). Uses the server and browser of tests/test_browser.py."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from app_fixtures import jpeg_bytes
from conftest import make_phone_photo
from test_browser import browser, page, pytestmark, server, shot, wait_idle  # noqa: F401 (fixtures, skip mark)


def test_iphone_photos_and_unread_files_get_rows(server, page, tmp_path):
    heic = make_phone_photo(tmp_path / "IMG_0001.HEIC", orientation=6).read_bytes()
    avif = make_phone_photo(tmp_path / "IMG_0002.avif", orientation=6).read_bytes()
    page.goto(server["url"] + "/Caption")
    page.get_by_text("Caption uploaded images").wait_for()
    files = [{"name": "IMG_0001.HEIC", "mimeType": "image/heic", "buffer": heic},
             {"name": "IMG_0002.avif", "mimeType": "image/avif", "buffer": avif},
             {"name": "IMG_0001.MOV", "mimeType": "video/quicktime", "buffer": b"\0\0\0\x14ftypqt  " + bytes(64)},
             {"name": "red.jpg", "mimeType": "image/jpeg", "buffer": jpeg_bytes((220, 20, 20))}]
    page.locator("[data-testid='stFileUploader'] input[type='file']").first.set_input_files(files)
    page.get_by_text("IMG_0001.MOV").first.wait_for()
    wait_idle(page)
    page.get_by_role("button", name="Caption uploaded images").click()
    page.get_by_role("button", name="Download CSV").wait_for()
    wait_idle(page)
    shot(page, "formats-caption-results")
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download CSV").click()
    rows = {r["image"]: r for r in csv.DictReader(io.StringIO(Path(dl.value.path()).read_text(encoding="utf-8-sig")))}
    assert set(rows) == {"IMG_0001.HEIC", "IMG_0002.avif", "IMG_0001.MOV", "red.jpg"}  # every file got its row
    for name in ("IMG_0001.HEIC", "IMG_0002.avif", "red.jpg"):
        assert rows[name]["caption"] and not rows[name]["error"]
    assert not rows["IMG_0001.MOV"]["caption"] and "video" in rows["IMG_0001.MOV"]["error"]
