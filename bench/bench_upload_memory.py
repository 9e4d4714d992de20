"""Peak memory of the server and the caption worker for one batch of uploads (Linux: /proc's VmHWM).

    python bench/bench_upload_memory.py [--mb 400] [--each 4] [--bundle models/default]

Uploads are tiny JPEGs padded to `each` MB (bytes after the end-of-image marker, which decoders skip), so the
captioning itself is cheap and what is measured is carrying the bytes: the page's list of uploads is made first and
not counted; the figures are the rise of each process's peak resident memory over its level before the batch.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _status(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak(pid: int | str) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def main() -> None:
    from PIL import Image

    from core.base.config import DecodeOptions
    from core.caption.client import CHUNK_BYTES, WorkerClient, _chunks

    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=400)
    p.add_argument("--each", type=int, default=4)
    p.add_argument("--bundle", default="models/default")
    args = p.parse_args()
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, format="JPEG")
    n = args.mb // args.each
    uploads = [(f"{i}.jpg", buf.getvalue() + bytes([i % 256]) * (args.each << 20)) for i in range(n)]
    chunk_mb = max(sum(len(s) for _, s in c) for c in _chunks(uploads, 16)) / 2**20
    client = WorkerClient(warm=None, nice=0)
    captioner = client.captioner(args.bundle)
    captioner.caption(uploads[:1], DecodeOptions(beam=1, max_len=5))  # the model's first pass is not what is measured
    server0, worker0 = _status("self", "VmRSS"), _status(client.pid, "VmRSS")
    _reset_peak("self")
    _reset_peak(client.pid)
    started = time.monotonic()
    results = captioner.caption(uploads, DecodeOptions(beam=1, max_len=5), batch_size=16)
    took = time.monotonic() - started
    server, worker = _status("self", "VmHWM") - server0, _status(client.pid, "VmHWM") - worker0
    client.stop()
    assert len(results) == n and all(r.caption for r in results), [r.error for r in results if r.error][:3]
    print(f"{n} uploads of {args.each} MB ({n * args.each} MB), CHUNK_BYTES {CHUNK_BYTES >> 20} MB, largest request "
          f"{chunk_mb:.0f} MB of image bytes: server +{server / 2**20:.0f} MB, worker +{worker / 2**20:.0f} MB "
          f"peak resident memory, {took:.1f} s")


if __name__ == "__main__":
    main()
