"""The real download code, against a local HTTP server on 127.0.0.1 (nothing leaves the machine)."""
import hashlib
import io
import json
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import make_image
from core.data.datasets import inspect_dataset
from core.data.download import COCO_PARTS, DownloadError, download, fetch_coco, safe_extract


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with `Range: bytes=N-` support (what resuming needs), as a real server answers: 206 with a
    Content-Range, or 416 when the range starts at the end. `mode` = "ignore-range" plays a broken server that
    answers 206 but sends the file from byte 0. Every request is logged as (path, Range header, status)."""

    mode = "normal"
    log: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        try:
            data = open(path, "rb").read()
        except OSError:
            return self.send_error(404)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if self.mode == "ignore-range":
            start = 0
        if rng and start >= len(data):
            self.log.append((self.path, rng, 416))
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        self.log.append((self.path, rng, 206 if rng else 200))
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    monkeypatch.setattr(RangeHandler, "log", [])
    monkeypatch.setattr(RangeHandler, "mode", "normal")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_resumes_and_verifies(server, tmp_path):
    root, url = server
    payload = bytes(range(256)) * 4000
    (root / "f.bin").write_bytes(payload)
    dest = tmp_path / "out" / "f.bin"
    dest.parent.mkdir()
    (tmp_path / "out" / "f.bin.part").write_bytes(payload[:1000])  # an earlier, interrupted download
    download(f"{url}/f.bin", dest, sha256=hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload and not (tmp_path / "out" / "f.bin.part").exists()
    assert RangeHandler.log == [("/f.bin", "bytes=1000-", 206)]  # resumed: only the rest was sent


def test_bad_checksum_and_missing_file_are_plain_errors(server, tmp_path):
    root, url = server
    (root / "f.bin").write_bytes(b"abc")
    with pytest.raises(DownloadError, match="corrupt"):
        download(f"{url}/f.bin", tmp_path / "f.bin", sha256="0" * 64)
    assert not (tmp_path / "f.bin").exists()
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{url}/missing.zip", tmp_path / "m.zip")


def test_unreachable_server_says_so(tmp_path):
    with pytest.raises(DownloadError, match="could not download"):
        download("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", timeout=5)


def _coco_server(root, tmp_path) -> dict:
    """Tiny COCO archives on the server; returns a catalogue like COCO_PARTS with their sizes and md5 sums."""
    (root / "annotations").mkdir(exist_ok=True)
    (root / "zips").mkdir(exist_ok=True)
    images = make_image(tmp_path / "img.jpg", "red", "square").read_bytes()
    ann = {"images": [{"id": 1, "file_name": "000000000001.jpg"}],
           "annotations": [{"id": 1, "image_id": 1, "caption": "a red square"}]}
    with zipfile.ZipFile(root / "annotations" / "annotations_trainval2017.zip", "w") as z:
        for split in ("train", "val"):
            z.writestr(f"annotations/captions_{split}2017.json", json.dumps(ann))
    for split in ("train", "val"):
        with zipfile.ZipFile(root / "zips" / f"{split}2017.zip", "w") as z:
            z.writestr(f"{split}2017/000000000001.jpg", images)
    return {name: (remote, into, (root / remote).stat().st_size, hashlib.md5((root / remote).read_bytes()).hexdigest())
            for name, (remote, into, _, _) in COCO_PARTS.items()}


def test_fetch_coco_builds_the_cocoapi_layout(server, tmp_path):
    root, url = server
    fetch_coco(tmp_path / "cocoapi", base_url=url, catalogue=_coco_server(root, tmp_path))
    info = inspect_dataset(tmp_path / "cocoapi")
    assert info.ok and info.splits == {"train": 1, "val": 1}
    assert not (tmp_path / "cocoapi" / "downloads").exists()


def test_a_complete_part_file_gets_416_and_is_finished(server, tmp_path):
    root, url = server
    payload = b"x" * 5000
    (root / "f.bin").write_bytes(payload)
    (tmp_path / "f.bin.part").write_bytes(payload)  # interrupted after the last byte, before the rename
    download(f"{url}/f.bin", tmp_path / "f.bin", size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    assert (tmp_path / "f.bin").read_bytes() == payload and RangeHandler.log == [("/f.bin", "bytes=5000-", 416)]


def test_a_server_ignoring_the_range_or_a_corrupt_part_starts_over(server, tmp_path):
    root, url = server
    payload = bytes(range(256)) * 100
    (root / "f.bin").write_bytes(payload)
    (tmp_path / "f.bin.part").write_bytes(payload[:1000])
    RangeHandler.mode = "ignore-range"  # answers 206 but sends from byte 0: appending would duplicate 1000 bytes
    download(f"{url}/f.bin", tmp_path / "f.bin")
    assert (tmp_path / "f.bin").read_bytes() == payload
    assert [status for _, _, status in RangeHandler.log] == [206, 200]  # refused, then from the start

    RangeHandler.mode, RangeHandler.log = "normal", []
    (tmp_path / "g.bin.part").write_bytes(b"\0" * 1000)  # a damaged .part: right length, wrong bytes
    (root / "g.bin").write_bytes(payload)
    messages = []
    download(f"{url}/g.bin", tmp_path / "g.bin", size=len(payload), md5=hashlib.md5(payload).hexdigest(),
             on_message=messages.append)
    assert (tmp_path / "g.bin").read_bytes() == payload and "corrupt" in messages[0]

    (tmp_path / "h.bin.part").write_bytes(payload + b"extra")  # longer than the file can be
    (root / "h.bin").write_bytes(payload)
    download(f"{url}/h.bin", tmp_path / "h.bin", size=len(payload))
    assert (tmp_path / "h.bin").read_bytes() == payload


def test_a_corrupt_archive_is_removed_and_downloaded_again(server, tmp_path):
    root, url = server
    catalogue = _coco_server(root, tmp_path)
    downloads = tmp_path / "cocoapi" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "val2017.zip").write_bytes(b"PK garbage from an earlier, broken run")
    messages = []
    fetch_coco(tmp_path / "cocoapi", parts=["annotations", "val"], base_url=url, on_message=messages.append,
               catalogue={k: (*v[:2], None, None) for k, v in catalogue.items()})  # no size/md5: the zip test finds it
    assert inspect_dataset(tmp_path / "cocoapi", splits=["val"]).ok
    assert any("val2017.zip is not a readable zip" in m and "downloading it again" in m for m in messages)

    good = (root / "zips" / "train2017.zip").read_bytes()
    (root / "zips" / "train2017.zip").write_bytes(good[:-30] + b"\0" * 30)  # the server itself serves a bad copy
    with pytest.raises(DownloadError, match="again after a fresh download"):
        fetch_coco(tmp_path / "c2", parts=["train"], base_url=url, catalogue={"train": (*catalogue["train"][:2], None, None)})
    assert not (tmp_path / "c2" / "downloads" / "train2017.zip").exists()  # nothing left to block the next run
    (root / "zips" / "train2017.zip").write_bytes(good)  # fixed: the next run works
    fetch_coco(tmp_path / "c2", parts=["annotations", "train"], base_url=url, catalogue=catalogue)
    assert inspect_dataset(tmp_path / "c2", splits=["train"]).ok


def test_coco_is_fetched_over_https_and_verified_by_size_and_md5_streamed(tmp_path, monkeypatch):
    from pathlib import Path

    from core.data.download import COCO_URL, file_digest

    assert COCO_URL.startswith("https://")
    assert all(isinstance(size, int) and size > 0 and len(md5) == 32 for _, _, size, md5 in COCO_PARTS.values())
    (tmp_path / "big").write_bytes(b"y" * 3_000_000)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read whole into memory"))
    assert file_digest(tmp_path / "big") == hashlib.sha256(b"y" * 3_000_000).hexdigest()


def test_zip_slip_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../evil.txt", "x")
    (tmp_path / "a.zip").write_bytes(buf.getvalue())
    with pytest.raises(DownloadError, match="unsafe path"):
        safe_extract(tmp_path / "a.zip", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
