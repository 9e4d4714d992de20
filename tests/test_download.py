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
from core.data import inspect_dataset
from core.download import DownloadError, download, fetch_coco, safe_extract


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with `Range: bytes=N-` support (what resuming needs)."""

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
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
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


def test_fetch_coco_builds_the_cocoapi_layout(server, tmp_path):
    root, url = server
    (root / "annotations").mkdir()
    (root / "zips").mkdir()
    images = make_image(tmp_path / "img.jpg", "red", "square").read_bytes()
    ann = {"images": [{"id": 1, "file_name": "000000000001.jpg"}],
           "annotations": [{"id": 1, "image_id": 1, "caption": "a red square"}]}
    with zipfile.ZipFile(root / "annotations" / "annotations_trainval2017.zip", "w") as z:
        for split in ("train", "val"):
            z.writestr(f"annotations/captions_{split}2017.json", json.dumps(ann))
    for split in ("train", "val"):
        with zipfile.ZipFile(root / "zips" / f"{split}2017.zip", "w") as z:
            z.writestr(f"{split}2017/000000000001.jpg", images)
    fetch_coco(tmp_path / "cocoapi", base_url=url)
    info = inspect_dataset(tmp_path / "cocoapi")
    assert info.ok and info.splits == {"train": 1, "val": 1}
    assert not (tmp_path / "cocoapi" / "downloads").exists()


def test_zip_slip_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../evil.txt", "x")
    (tmp_path / "a.zip").write_bytes(buf.getvalue())
    with pytest.raises(DownloadError, match="unsafe path"):
        safe_extract(tmp_path / "a.zip", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
