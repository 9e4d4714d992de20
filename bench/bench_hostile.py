"""What hostile files cost: each bad input through the app's public path, in a fresh process, with its wall time and
peak memory above the process's baseline (Linux: VmHWM after resetting it through /proc/self/clear_refs). Prints a Markdown table: input | what the user sees | memory | time.

    .venv/bin/python bench/bench_hostile.py            # all cases (~1 min, ~1 GB of scratch disk, sparse)
    .venv/bin/python bench/bench_hostile.py zip        # only the cases whose name contains "zip"
"""
from __future__ import annotations

import io
import json
import gc
import multiprocessing as mp
import shutil
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass
class Upload:
    name: str
    data: bytes

    def getvalue(self) -> bytes:
        return self.data


def _zip(members: dict, method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _jpeg(w: int, h: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)).resize((w, h))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _png(w: int, h: int, mode="L", value=0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (w, h), value).save(buf, "PNG")
    return buf.getvalue()


def _png_header(w: int, h: int) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", b"")


def _rows(items) -> str:
    from core.data.images import Refused

    refused = [(n, s.reason) for n, s in items if isinstance(s, Refused)]
    kept = len(items) - len(refused)
    first = f'"{refused[0][0]}: {refused[0][1][:90]}"' if refused else ""
    return f"{len(items)} rows, {len(refused)} with an error {first}" + (f"; {kept} read" if kept else "")


# ------------------------------------------------------------------------------------------------------ cases
# each: (setup() -> argument, run(argument) -> what the user sees); setup is not timed

def upload_case(files_fn):
    def run(files):
        from ui.inputs import read_uploads

        items, _ = read_uploads(files)
        return _rows(items)
    return files_fn, run


def caption_decode(files):
    """What captioning one upload costs in decoding: the page's path (budget, thumbnail, model input, preview)."""
    from core.data.images import Refused
    from core.nn.batches import iter_image_batches
    from ui.images import preview_bytes, thumbnail_data_url
    from ui.inputs import read_uploads

    items, _ = read_uploads(files)
    sources = [s for _, s in items]
    for _, x, errors in iter_image_batches(sources, 256, (0.5,) * 3, (0.5,) * 3, batch_size=4):
        pass
    thumbs = [thumbnail_data_url(s) for s in sources]
    previews = [preview_bytes(s) for s in sources]
    if isinstance(sources[0], Refused):
        return f"error row: {sources[0].reason[:90]}"
    return f"captioned (input {tuple(x.shape)}, thumbnail {bool(thumbs[0])}, preview {len(previews[0]) // 1000} KB)"


def grey16(files):
    from core.data.images import load_image

    return f"decoded grey level {load_image(files[0].data).getpixel((0, 0))[0]} of 255 (50% grey = 128)"


def _bundle_dir(tmp: Path, change=None, name="m") -> Path:
    import torch  # noqa: F401  (setup only)

    from core.nn.weights import save_bundle
    from core.base.config import ModelConfig
    from core.nn.model import CaptionModel
    from core.data.vocabulary import Vocabulary

    vocab = Vocabulary.build(["a b c d e f g h"], min_count=1)
    cfg = ModelConfig(vocab_size=len(vocab), embed_dim=16, hidden_dim=24, attention_dim=8, feature_proj_dim=16)
    folder = save_bundle(tmp / name, CaptionModel(cfg, with_encoder=False, pretrained=False), vocab)
    if change:
        change(folder)
    return folder


def _set(field, value):
    def change(folder):
        cfg = json.loads((folder / "config.json").read_text())
        cfg[field] = value
        (folder / "config.json").write_text(json.dumps(cfg))
    return change


def list_models(folder: Path) -> str:
    from core.bundle.store import list_bundles

    found = list_bundles(folder.parent)
    return "; ".join(f"{b.name}: " + (f"unusable: {b.problem[len(str(b.path)) + 1:][:80]}" if b.problem else "usable")
                     for b in found)


def load_model(folder: Path) -> str:
    from core.bundle.store import BundleError
    from core.nn.weights import load_bundle

    try:
        load_bundle(folder, pretrained=False)
        return "loaded"
    except BundleError as e:
        return "BundleError: " + str(e).replace(str(folder), "<model>")[:110]


def big_weights(tmp: Path) -> Path:
    """A 1.5 GB model.safetensors (sparse: costs no disk) next to a valid bundle's JSON files."""
    folder = _bundle_dir(tmp)
    header = json.dumps({"w": {"dtype": "F32", "shape": [375_000_000], "data_offsets": [0, 1_500_000_000]}}).encode()
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 1_500_000_000)
    return folder


def _serve(tmp: Path, mode: str):
    """A 127.0.0.1 server for one file; mode "complete-part" or "ignore-range"."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            data = (tmp / "www" / "f.zip").read_bytes()
            rng = self.headers.get("Range")
            start = 0 if (mode == "ignore-range" or not rng) else int(rng.split("=")[1].split("-")[0])
            if rng and start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(tmp)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}/f.zip"


def download_case(mode: str):
    def setup(tmp: Path):
        (tmp / "www").mkdir()
        payload = _zip({"a.txt": b"x" * 100_000})
        (tmp / "www" / "f.zip").write_bytes(payload)
        (tmp / "f.zip.part").write_bytes(payload if mode != "corrupt-part" else b"\0" * len(payload))
        return tmp, _serve(tmp, "ignore-range" if mode == "ignore-range" else "normal"), payload

    def run(arg):
        import hashlib

        from core.data.download import DownloadError, download

        tmp, url, payload = arg
        messages = []
        try:
            download(url, tmp / "f.zip", size=len(payload), md5=hashlib.md5(payload).hexdigest(),
                     on_message=messages.append)
        except DownloadError as e:
            return f"DownloadError: {e}"
        ok = (tmp / "f.zip").read_bytes() == payload
        return ("finished, file intact" if ok else "WRONG FILE") + (f" (said: {messages[0][:70]})" if messages else "")
    return setup, run


def damaged_archive(tmp: Path):
    (tmp / "www" / "annotations").mkdir(parents=True)
    good = _zip({"annotations/captions_val2017.json": json.dumps({"images": [], "annotations": []})})
    (tmp / "www" / "annotations" / "annotations_trainval2017.zip").write_bytes(good)
    (tmp / "coco" / "downloads").mkdir(parents=True)
    (tmp / "coco" / "downloads" / "annotations_trainval2017.zip").write_bytes(b"PK\x03\x04 damaged")
    return tmp


def run_damaged_archive(tmp: Path) -> str:
    import http.server
    import threading
    from functools import partial

    from core.data.download import fetch_coco

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(tmp / "www")))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    messages = []
    fetch_coco(tmp / "coco", parts=["annotations"], base_url=f"http://127.0.0.1:{httpd.server_address[1]}",
               catalogue={"annotations": ("annotations/annotations_trainval2017.zip", ".", None, None)},
               on_message=messages.append)
    ok = (tmp / "coco" / "annotations" / "captions_val2017.json").exists()
    return f"said \"{messages[0][:80]}\"; " + ("extracted" if ok else "NOT extracted")


def digest_big(tmp: Path) -> Path:
    with open(tmp / "big.zip", "wb") as f:
        f.truncate(1_000_000_000)
    return tmp / "big.zip"


def run_digest(path: Path) -> str:
    from core.data.download import file_digest

    return f"md5 {file_digest(path, 'md5')[:12]}... of 1 GB, streamed"


CASES = {
    "zip bomb by ratio: 5 zips of 10 x 50 MB zeros (deflate)": upload_case(
        lambda tmp: [Upload(f"{k}.zip", _zip({f"{i}.bmp": b"\0" * 50_000_000 for i in range(10)})) for k in range(5)]),
    "CPU bomb: zip of 20 x 50 MB+1 zeros (bzip2)": upload_case(
        lambda tmp: [Upload("bz.zip", _zip({f"{i}.jpg": b"\0" * 50_000_001 for i in range(20)}, zipfile.ZIP_BZIP2))]),
    "zip of 25,000 tiny entries": upload_case(
        lambda tmp: [Upload("many.zip", _zip({f"{i}.jpg": b"" for i in range(25_000)}, zipfile.ZIP_STORED))]),
    "zip: encrypted member + nested zip + notes.txt + cats/1.jpg + dogs/1.jpg": upload_case(
        lambda tmp: [Upload("z.zip", _encrypted_zip())]),
    "PNG header declaring 100.01 MP (33 bytes)": upload_case(lambda tmp: [Upload("bomb.png", _png_header(10_001, 10_000))]),
    "EPS file renamed photo.jpg": upload_case(
        lambda tmp: [Upload("photo.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")]),
    "48-MP JPEG photo (8000 x 6000), caption path": (lambda tmp: [Upload("big.jpg", _jpeg(8000, 6000))], caption_decode),
    "99-MP black PNG (9,950 x 9,950), caption path": (lambda tmp: [Upload("black.png", _png(9950, 9950))], caption_decode),
    "16-bit grey PNG at 50%": (lambda tmp: [Upload("g.png", _png(64, 64, "I;16", 32768))], grey16),
    "model folder: config.json is a list": (lambda tmp: _bundle_dir(tmp, lambda f: (f / "config.json").write_text("[]")),
                                            list_models),
    "model folder: metrics.json unreadable, card.md Latin-1": (lambda tmp: _bundle_dir(tmp, lambda f: (
        (f / "metrics.json").write_bytes(b"\xff{"), (f / "card.md").write_bytes("é".encode("latin-1")))), list_models),
    "model folder: 1.5 GB model.safetensors, listing": (big_weights, list_models),
    "model folder: hidden_dim 8000 in config.json, loading": (lambda tmp: _bundle_dir(tmp, _set("hidden_dim", 8000)),
                                                              load_model),
    "model folder: dropout \"high\", loading": (lambda tmp: _bundle_dir(tmp, _set("dropout", "high")), load_model),
    "download: .part already complete (HTTP 416)": download_case("complete"),
    "download: server answers 206 but ignores Range": download_case("ignore-range"),
    "download: corrupt .part of the right size": download_case("corrupt-part"),
    "download: damaged archive left by an earlier run": (damaged_archive, run_damaged_archive),
    "download: checksum of a 1 GB archive": (digest_big, run_digest),
}


def _encrypted_zip() -> bytes:
    data = bytearray(_zip({"secret.jpg": _jpeg(64, 48), "inner.zip": _zip({}), "notes.txt": b"hi",
                           "cats/1.jpg": _jpeg(64, 48), "dogs/1.jpg": _jpeg(64, 48)}))
    data[6] |= 1
    data[data.index(b"PK\x01\x02") + 8] |= 1
    return bytes(data)


def _status_kb(field: str) -> int:
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(field + ":"))
    return int(line.split()[1])


def _measure(name: str, queue) -> None:
    setup, run = CASES[name]
    tmp = Path(tempfile.mkdtemp(prefix="hostile-"))
    try:
        arg = setup(tmp)
        import PIL.Image  # noqa: F401  (imports are not the case's cost)

        import torch  # noqa: F401

        import core.bundle.store  # noqa: F401
        import core.nn.model  # noqa: F401
        import core.data.download  # noqa: F401
        import ui.inputs  # noqa: F401
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) restarts from here, after setup
        base = _status_kb("VmRSS")
        t0, c0 = time.perf_counter(), time.process_time()
        seen = run(arg)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        queue.put((seen, max(0, _status_kb("VmHWM") - base) / 1024, wall, cpu))
    except Exception as e:  # a case that raises is a finding, not a crash of the benchmark
        queue.put((f"RAISED {type(e).__name__}: {e}", 0.0, 0.0, 0.0))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    wanted = [n for n in CASES if not sys.argv[1:] or any(a.lower() in n.lower() for a in sys.argv[1:])]
    print("| bad input | what the user sees | memory above baseline | time (wall / CPU) |")
    print("|---|---|---|---|")
    ctx = mp.get_context("fork")  # fresh address space per case: peak memory is the case's own
    for name in wanted:
        queue = ctx.Queue()
        p = ctx.Process(target=_measure, args=(name, queue))
        p.start()
        seen, mem_mb, wall, cpu = queue.get()
        p.join()
        print(f"| {name} | {seen} | {mem_mb:,.0f} MB | {wall:.2f} s / {cpu:.2f} s |", flush=True)


if __name__ == "__main__":
    main()
