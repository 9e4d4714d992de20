"""The command line's progress: a tqdm bar on a terminal, plain whole lines (one per photo) in a log or a pipe.

Captions come a batch at a time (beam search is faster per image in batches of up to 128 on a CPU), so the bar
counts photos as their captions are written and, between batches, how many photos have been read: a 60-photo
folder shows it is working from the first photo on. Without a terminal, every captioned photo is one line
(`captioned 3/60 (1.4 photos/s, about 41 s left): cats/1.jpg`), readable in a log and by a script.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


class PhotoProgress:
    def __init__(self, total: int, stream: TextIO | None = None, tty: bool | None = None, label: str = "",
                 every_s: float = 0.0, read_every_s: float = 5.0):
        """total: photos this run captions. tty: draw a bar (default: when `stream` is a terminal). label: what
        each line starts with (a torchrun rank's "rank 1/2: "). every_s: plain lines at most this often (ranks
        share one terminal), else one per photo. read_every_s: without a bar, a `read N/M` line at most this often
        while a batch is being captioned, so that a log shows the work before the batch's captions come."""
        self.stream = stream or sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self.total, self.label, self.every_s, self.read_every_s = total, label, every_s, read_every_s
        self.done = self.failed = self.read = 0
        self._t0 = self._read_shown = time.monotonic()
        self._shown = 0.0
        self._lock = threading.Lock()  # photo_read comes from the image-reading threads
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="photo", file=self.stream, desc=f"{label}captioning",
                            dynamic_ncols=True, smoothing=0.1)

    def photo_read(self, *_) -> None:
        """One more photo read and decoded (or found unreadable): on the bar, or a line now and then."""
        with self._lock:
            self.read += 1
            if self.read > self.total:
                return
            if self.bar is not None:
                self.bar.set_postfix_str(f"read {self.read}/{self.total}")
            elif self.read > self.done and time.monotonic() - self._read_shown >= self.read_every_s:
                self._read_shown = time.monotonic()
                print(f"{self.label}read {self.read}/{self.total} photos, captioning them", file=self.stream,
                      flush=True)

    def photos_done(self, rows: list[tuple[str, str]]) -> None:
        """(name, error or "") of each photo of a finished batch, in order: the bar or a line moves per photo."""
        with self._lock:
            for name, error in rows:
                self.done += 1
                self.failed += bool(error)
                if self.bar is not None:
                    if error:  # which photo was left unchanged, and why, above the bar
                        self.bar.write(f"{self.label}{name}: {error}", file=self.stream)
                    self.bar.update(1)
                elif (error or not self.every_s or self.done == self.total
                      or time.monotonic() - self._shown >= self.every_s):
                    self._shown = time.monotonic()
                    what = f" -- not captioned: {error}" if error else ""
                    print(f"{self.label}captioned {self.done}/{self.total} ({self._speed()}): {name}{what}",
                          file=self.stream, flush=True)

    def _speed(self) -> str:
        rate = self.done / max(time.monotonic() - self._t0, 1e-9)
        left = (self.total - self.done) / rate if rate and self.done < self.total else None
        return f"{rate:.1f} photos/s" + (f", about {left:.0f} s left" if left is not None else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False
