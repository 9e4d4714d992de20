"""Downloading datasets: `python -m core.data.download coco --dest cocoapi [--parts annotations val train]`.

Downloads resume where they stopped (HTTP Range), land under a `.part` name and are renamed only when
complete (and, when a checksum is known, verified), so a half-downloaded file is never mistaken for data.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

COCO_URL = "https://images.cocodataset.org"
# part -> (path on the server, folder to unzip into (relative to the dataset root), size in bytes, md5).
# Sizes and md5 sums are the ones COCO publishes and many projects check against.
COCO_PARTS = {
    "annotations": ("annotations/annotations_trainval2017.zip", ".", 252_907_541, "f4bbac642086de4f52a3fdda2de5fa2c"),
    "val": ("zips/val2017.zip", "images", 815_585_330, "442b8da7639aecaf257c1dceb8ba8c80"),
    "train": ("zips/train2017.zip", "images", 19_336_861_798, "cced6f7f71b7629ddf16f17bbcfab6b2"),
}
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that failed; the message says why in plain words."""


class _StartOver(Exception):
    """The .part file or the server's answer cannot be trusted: delete the .part and download from byte 0."""


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file, read in 1 MB chunks (a 19 GB archive never sits in memory)."""
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """`bytes 100-199/1000` -> (100, 1000); `bytes */1000` -> (None, 1000); total None when `*` or unparsable."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start, total = m.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _fetch(url: str, part: Path, size: int | None, timeout: float, on_progress) -> None:
    """Append what the server has past the .part's end; checks that the server answers the range asked for."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        raise _StartOver(f"the unfinished download is larger ({have:,} bytes) than the file ({size:,} bytes)")
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing past `have`: the .part is complete if it is the file's whole size
            total = _content_range(e.headers.get("Content-Range"))[1] or size
            if total is not None and have != total:
                raise _StartOver(f"the server says the file has {total:,} bytes, the unfinished download {have:,}")
            return
        raise DownloadError(f"{url} answered HTTP {e.code} ({e.reason})") from None
    with resp:
        if resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have:  # a server that ignores the Range but says 206 would duplicate bytes
                raise _StartOver(f"the server sent bytes from {start} when asked for bytes from {have:,}")
        else:  # 200: the whole file, whatever was asked
            have, length = 0, resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if size is not None and total is not None and total != size:
            raise DownloadError(f"{url} has {total:,} bytes, but the expected file has {size:,}; the server offers "
                                "a different file")
        total = total or size
        with open(part, "ab" if have else "wb") as f:
            done = have
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                done += len(chunk)
                if on_progress:
                    on_progress(done, total)
            f.flush()
            os.fsync(f.fileno())
    got = part.stat().st_size
    if total is not None and got < total:
        raise DownloadError(f"{url} ended early ({got:,} of {total:,} bytes); run again to resume")
    if total is not None and got > total:
        raise _StartOver(f"the download came out larger ({got:,} bytes) than the file ({total:,} bytes)")


def _verify(part: Path, name: str, size: int | None, sha256: str | None, md5: str | None) -> None:
    got = part.stat().st_size
    if size is not None and got != size:
        raise _StartOver(f"{name} has {got:,} bytes, expected {size:,}")
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected and (digest := file_digest(part, algorithm)) != expected.lower():
            raise _StartOver(f"{name} is corrupt ({algorithm} {digest[:12]}..., expected {expected[:12]}...)")


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60,
             on_progress: Callable[[int, int | None], None] | None = None, size: int | None = None,
             md5: str | None = None, on_message: Callable[[str], None] | None = None) -> Path:
    """Download `url` to `dest`, resuming an earlier `.part`; renamed into place only when complete and (when
    `size`, `sha256` or `md5` are given) verified. A `.part` or an answer that cannot be trusted (a wrong range, a
    wrong size, a wrong checksum) is thrown away and the download starts over once; a second failure is an error."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in (1, 2):
        try:
            _fetch(url, part, size, timeout, on_progress)
            _verify(part, dest.name, size, sha256, md5)
        except _StartOver as e:
            part.unlink(missing_ok=True)
            if attempt == 2:
                raise DownloadError(f"{e}, again after downloading it from the start; the server or the connection "
                                    "damages it. Try again later.") from None
            if on_message:
                on_message(f"{e}; downloading {dest.name} again from the start")
            continue
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise DownloadError(f"could not download {url}: {getattr(e, 'reason', e)}. Check the internet "
                                f"connection; run the same command again to resume.") from None
        os.replace(part, dest)
        return dest
    raise AssertionError("unreachable")


class BadArchive(DownloadError):
    """A zip that is damaged (not a zip, or a member fails its CRC)."""


def safe_extract(archive: Path, target: Path) -> None:
    """Test the zip (every member's CRC), then unzip, refusing members that would land outside `target` (zip-slip)."""
    target = Path(target).resolve()
    try:
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():
                if not (target / member).resolve().is_relative_to(target):
                    raise DownloadError(f"{archive.name} holds an unsafe path {member!r}; not extracted")
            bad = z.testzip()
            if bad is not None:
                raise BadArchive(f"{archive.name} is damaged ({bad} fails its checksum)")
            z.extractall(target)
    except (zipfile.BadZipFile, EOFError) as e:
        raise BadArchive(f"{archive.name} is not a readable zip ({e})") from None


def fetch_coco(root: Path, parts=("annotations", "val", "train"), base_url: str = COCO_URL,
               on_progress: Callable[[str, int, int | None], None] | None = None,
               catalogue: dict | None = None, on_message: Callable[[str], None] | None = None) -> None:
    """Download, verify and unzip COCO-2017 into `root`. An archive left by an earlier run is checked first; a
    damaged one is deleted and downloaded again, so a bad download never blocks later runs."""
    root = Path(root)
    say = on_message or (lambda text: None)
    for name in parts:
        remote, into, size, md5 = (catalogue or COCO_PARTS)[name]
        archive = root / "downloads" / Path(remote).name

        def get():
            download(f"{base_url}/{remote}", archive, size=size, md5=md5, on_message=say,
                     on_progress=(lambda d, t, n=name: on_progress(n, d, t)) if on_progress else None)

        if archive.exists() and (archive.stat().st_size != size if size else False):
            say(f"{archive.name} from an earlier run has the wrong size; downloading it again")
            archive.unlink()
        if not archive.exists():
            get()
        try:
            safe_extract(archive, root / into)
        except BadArchive as e:
            say(f"{e}; deleting it and downloading it again")
            archive.unlink()
            get()
            try:
                safe_extract(archive, root / into)
            except BadArchive as e:
                archive.unlink(missing_ok=True)
                raise DownloadError(f"{e}, again after a fresh download; try again later") from None
    shutil.rmtree(root / "downloads", ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.data.download", description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=["coco"])
    p.add_argument("--dest", default="cocoapi")
    p.add_argument("--parts", nargs="+", default=["annotations", "val", "train"], choices=list(COCO_PARTS))
    p.add_argument("--base-url", default=COCO_URL)
    args = p.parse_args(argv)

    def show(part, done, total):
        print(f"\r{part}: {done / 1e6:,.0f} MB" + (f" of {total / 1e6:,.0f} MB" if total else ""), end="", file=sys.stderr)

    try:
        fetch_coco(Path(args.dest), args.parts, args.base_url, on_progress=show,
                   on_message=lambda text: print(f"\n{text}", file=sys.stderr))
    except DownloadError as e:
        print(f"\n{e}", file=sys.stderr)
        return 1
    print(f"\nCOCO-2017 is in {args.dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
