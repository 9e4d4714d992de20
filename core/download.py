"""Downloading datasets: `python -m core.download coco --dest cocoapi [--parts annotations val train]`.

Downloads resume where they stopped (HTTP Range), land under a `.part` name and are renamed only when
complete (and, when a checksum is known, verified), so a half-downloaded file is never mistaken for data.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

COCO_URL = "http://images.cocodataset.org"
COCO_PARTS = {  # part -> (path on the server, folder to unzip into, relative to the dataset root)
    "annotations": ("annotations/annotations_trainval2017.zip", "."),
    "val": ("zips/val2017.zip", "images"),
    "train": ("zips/train2017.zip", "images"),
}


class DownloadError(RuntimeError):
    """A download that failed; the message says why in plain words."""


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60,
             on_progress: Callable[[int, int | None], None] | None = None) -> Path:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resumed = resp.status == 206
            total = resp.headers.get("Content-Length")
            total = int(total) + (have if resumed else 0) if total else None
            with open(part, "ab" if resumed else "wb") as f:
                done = have if resumed else 0
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    done += len(chunk)
                    if on_progress:
                        on_progress(done, total)
                f.flush()
                os.fsync(f.fileno())
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part is already complete
            pass
        else:
            raise DownloadError(f"{url} answered HTTP {e.code} ({e.reason})") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise DownloadError(f"could not download {url}: {getattr(e, 'reason', e)}. Check the internet "
                            f"connection; run the same command again to resume.") from None
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url} ended early ({part.stat().st_size} of {total} bytes); run again to resume")
    if sha256:
        digest = hashlib.sha256(part.read_bytes()).hexdigest()
        if digest != sha256:
            part.unlink()
            raise DownloadError(f"{dest.name} is corrupt (sha256 {digest[:12]}..., expected {sha256[:12]}...)")
    os.replace(part, dest)
    return dest


def safe_extract(archive: Path, target: Path) -> None:
    """Unzip, refusing members that would land outside `target` (zip-slip)."""
    target = Path(target).resolve()
    with zipfile.ZipFile(archive) as z:
        for member in z.namelist():
            if not (target / member).resolve().is_relative_to(target):
                raise DownloadError(f"{archive.name} holds an unsafe path {member!r}; not extracted")
        z.extractall(target)


def fetch_coco(root: Path, parts=("annotations", "val", "train"), base_url: str = COCO_URL,
               on_progress: Callable[[str, int, int | None], None] | None = None) -> None:
    root = Path(root)
    for name in parts:
        remote, into = COCO_PARTS[name]
        archive = root / "downloads" / Path(remote).name
        if not archive.exists():
            download(f"{base_url}/{remote}", archive,
                     on_progress=(lambda d, t, n=name: on_progress(n, d, t)) if on_progress else None)
        safe_extract(archive, root / into)
    shutil.rmtree(root / "downloads", ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.download", description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=["coco"])
    p.add_argument("--dest", default="cocoapi")
    p.add_argument("--parts", nargs="+", default=["annotations", "val", "train"], choices=list(COCO_PARTS))
    p.add_argument("--base-url", default=COCO_URL)
    args = p.parse_args(argv)

    def show(part, done, total):
        print(f"\r{part}: {done / 1e6:,.0f} MB" + (f" of {total / 1e6:,.0f} MB" if total else ""), end="", file=sys.stderr)

    try:
        fetch_coco(Path(args.dest), args.parts, args.base_url, on_progress=show)
    except DownloadError as e:
        print(f"\n{e}", file=sys.stderr)
        return 1
    print(f"\nCOCO-2017 is in {args.dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
