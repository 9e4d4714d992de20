"""The app server's side of the caption worker (core.worker): start it, send requests, stream the answers back.

Torch-free, as the pages that use it are. One WorkerClient per server: `captioner(bundle)` gives an object with
Captioner's `iter_captions` / `caption` whose work is done in the worker, so the pages and core.library use it as
they would a Captioner loaded in their own process. The worker is started with the server, at a lower CPU priority;
if it ends (a crash, killed, out of memory), the requests waiting on it fail with WorkerStopped and the next request
starts a new one.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

from .bundle import BundleError
from .data import Refused
from .result import CaptionResult

REPO = Path(__file__).resolve().parent.parent
NICE_ENV = "CAPTION_WORKER_NICE"  # the worker's nice value instead of NICE (0: the server's priority)
NICE = 10  # the worker's nice value: it yields the CPU to the server and the browser (see core.worker)
CHUNK_BYTES = 32 << 20  # image bytes sent per caption request: the worker holds one chunk of uploads, not all
CANCEL_WAIT_S = 300  # a cancelled request waits this long at most for the batch being captioned


class WorkerError(RuntimeError):
    """A request failed in the worker (the message says why)."""


class WorkerStopped(WorkerError):
    """The worker process ended while a request waited for it."""


class WorkerClient:
    def __init__(self, warm: Path | str | None = None, nice: int | None = None):
        self.warm = warm
        self.nice = int(os.environ.get(NICE_ENV, NICE)) if nice is None else nice
        self._lock = threading.Lock()  # the process and the waiting requests
        self._write_lock = threading.Lock()  # one request line at a time on the worker's stdin
        self._proc: subprocess.Popen | None = None
        self._waiting: dict[int, queue.Queue] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ the process

    def start(self) -> None:
        """Start the worker unless it runs; returns at once (it loads `warm` in its own time)."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        cmd = [sys.executable, "-m", "core.worker"]
        if self.warm:
            cmd += ["--warm", str(self.warm)]
        if self.nice:
            cmd += ["--nice", str(self.nice)]
        # stderr: the server's own, so that the worker's messages appear where the server's do
        proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                encoding="utf-8", bufsize=1)
        self._proc = proc
        threading.Thread(target=self._read, args=(proc,), name="caption-worker-reader", daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                box = self._waiting.get(msg.get("id"))
            if box is not None:
                box.put(msg)
        code = proc.wait()
        with self._lock:  # everything still waiting on this process hears that it ended
            if self._proc is proc:
                self._proc = None
            for box in self._waiting.values():
                box.put({"stopped": code, "proc": proc.pid})

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self, timeout: float = 10) -> None:
        """Close the worker's stdin (it exits after its requests' current batches), kill it if it does not."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    # ------------------------------------------------------------------ requests

    def request(self, op: str, **fields) -> Iterator[dict]:
        """Send a request; yield its answers until its end. A failure raises (BundleError, WorkerError,
        WorkerStopped). Closing the iterator early cancels the request and waits for the worker to stop it."""
        rid = next(self._ids)
        box: queue.Queue = queue.Queue()
        with self._lock:
            self._start_locked()
            proc = self._proc
            self._waiting[rid] = box
        ended = False
        try:
            self._send(proc, {"id": rid, "op": op, **fields})
            while True:
                msg = box.get()
                if "stopped" in msg:
                    if msg["proc"] != proc.pid:
                        continue
                    ended = True
                    raise WorkerStopped(f"The caption worker stopped (exit code {msg['stopped']}); the next request "
                                        "starts it again. Its last messages are in the terminal that runs the app.")
                if "error" in msg:
                    ended = True
                    if msg.get("kind") == "BundleError":
                        raise BundleError(msg["error"])
                    raise WorkerError(msg["error"])
                if msg.get("end"):
                    ended = True
                    return
                yield msg
        finally:
            if not ended:  # closed early: stop it in the worker too, and wait until it has
                self._cancel(proc, rid, box)
            with self._lock:
                self._waiting.pop(rid, None)

    def _send(self, proc: subprocess.Popen, msg: dict) -> None:
        line = json.dumps(msg, separators=(",", ":")) + "\n"
        try:
            with self._write_lock:
                proc.stdin.write(line)
                proc.stdin.flush()
        except (OSError, ValueError):  # its pipe is closed: the reader thread tells the waiting request
            pass

    def _cancel(self, proc: subprocess.Popen, rid: int, box: queue.Queue) -> None:
        self._send(proc, {"id": None, "op": "cancel", "target": rid})
        while True:
            try:
                msg = box.get(timeout=CANCEL_WAIT_S)
            except queue.Empty:
                return
            if msg.get("end") or "error" in msg or ("stopped" in msg and msg["proc"] == proc.pid):
                return

    def load(self, bundle: Path | str, device: str = "auto") -> None:
        """Load a bundle in the worker (at once if it is loaded); BundleError says why it cannot be."""
        for _ in self.request("load", bundle=str(bundle), device=device):
            pass

    def device_report(self) -> dict:
        """core.device's DeviceReport as a dict, made in the worker once its warm-up is done."""
        for msg in self.request("device"):
            return msg["device"]
        raise WorkerError("the worker sent no device report")

    def captioner(self, bundle: Path | str, device: str = "auto") -> "RemoteCaptioner":
        """A Captioner-like handle on a bundle loaded in the worker (loaded now, so that BundleError comes here)."""
        self.load(bundle, device)
        return RemoteCaptioner(self, str(bundle), device)


class RemoteCaptioner:
    """Captioner's interface (iter_captions, caption) for a bundle loaded in the worker."""

    def __init__(self, client: WorkerClient, bundle: str, device: str = "auto"):
        self.client, self.bundle, self.device = client, bundle, device

    def iter_captions(self, items: list[tuple[str, Path | bytes]], **options) -> Iterator[list[CaptionResult]]:
        """As Captioner.iter_captions: results batch by batch, in order; closing it cancels the rest."""
        batch = options.get("batch_size", 16)
        for chunk in _chunks(items, batch):
            wire = [[name, _wire(src)] for name, src in chunk]
            for msg in self.client.request("caption", bundle=self.bundle, device=self.device, items=wire,
                                           options=options):
                yield [CaptionResult.from_json(r) for r in msg["results"]]

    def caption(self, items: list[tuple[str, Path | bytes]], **options) -> list[CaptionResult]:
        return [r for batch in self.iter_captions(items, **options) for r in batch]


def _wire(src) -> dict:
    """An item's source as core.worker.decode_items reads it: bytes, a path, or a refusal (core.data.Refused)."""
    if isinstance(src, bytes):
        return {"bytes": base64.b64encode(src).decode("ascii")}
    if isinstance(src, Refused):
        return {"refused": src.reason}
    return {"path": os.fspath(src)}


def _chunks(items: list, batch: int) -> Iterator[list]:
    """items in runs of whole batches holding at most CHUNK_BYTES of image bytes (paths cost nothing)."""
    start, size = 0, 0
    for i, (_, src) in enumerate(items):
        size += len(src) if isinstance(src, bytes) else 0
        if size > CHUNK_BYTES and (i + 1 - start) % batch == 0:
            yield items[start:i + 1]
            start, size = i + 1, 0
    if start < len(items):
        yield items[start:]
