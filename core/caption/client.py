"""The app server's side of the caption worker (core.caption.worker): start it, send requests, stream the answers back.

Torch-free, as the pages that use it are. One WorkerClient per server: `captioner(bundle)` gives an object with
Captioner's `iter_captions` / `caption` whose work is done in the worker, so the pages and core.caption.library use it as
they would a Captioner loaded in their own process. The worker is started with the server, at a lower CPU priority;
if it ends (a crash, killed, out of memory), the requests waiting on it fail with WorkerStopped and the next request
starts a new one. A worker that says nothing for STALL_S seconds (no answer and none of the heartbeats it sends every
2 s, even while it loads a model) is stopped or frozen: it is killed, a fresh one is started, and the requests that
waited on it fail with WorkerStopped in plain words. No request ever waits on it forever, not even to send: request
lines go out through a writer thread of the worker's own, so a worker that stopped reading holds up no page.
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
import time
from pathlib import Path
from typing import Iterator

from core.base.config import DecodeOptions
from core.base.paths import REPO_ROOT, WORKER_NICE_ENV, WORKER_STALL_ENV
from core.bundle.store import BundleError
from core.caption.result import CaptionResult
from core.data.images import Refused

NICE = 10  # the worker's nice value: it yields the CPU to the server and the browser (see core.caption.worker)
CHUNK_BYTES = 32 << 20  # image bytes sent per caption request: the worker holds one chunk of uploads, not all
CANCEL_WAIT_S = 300  # a cancelled request waits this long at most for the batch being captioned
# The worker's heartbeats come every 2 s from a thread of their own, during a model load too (an import gives up
# the interpreter between modules): a minute of silence is some thirty missed, which a slow laptop under load does
# not explain, while a stopped (SIGSTOP, a debugger) or frozen process does.
STALL_S = 60.0
POLL_S = 0.5  # how often a waiting request looks at the worker's silence


class WorkerError(RuntimeError):
    """A request failed in the worker (the message says why)."""


class WorkerStopped(WorkerError):
    """The worker process ended while a request waited for it."""


class WorkerClient:
    def __init__(self, warm: Path | str | None = None, nice: int | None = None, stall_s: float | None = None):
        self.warm = warm
        self.nice = int(os.environ.get(WORKER_NICE_ENV, NICE)) if nice is None else nice
        self.stall_s = float(os.environ.get(WORKER_STALL_ENV, STALL_S)) if stall_s is None else stall_s
        self._lock = threading.Lock()  # the process and the waiting requests
        self._proc: subprocess.Popen | None = None
        self._outbox: dict[int, queue.Queue] = {}  # per worker pid: the lines its writer thread sends, in order
        self._heard: dict[int, float] = {}  # per worker pid: when it last said anything (time.monotonic)
        self._hung: set[int] = set()  # pids killed for their silence
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
        cmd = [sys.executable, "-m", "core.caption.worker"]
        if self.warm:
            cmd += ["--warm", str(self.warm)]
        if self.nice:
            cmd += ["--nice", str(self.nice)]
        # stderr: the server's own, so that the worker's messages appear where the server's do
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                encoding="utf-8", errors="replace", bufsize=1)
        self._proc = proc
        self._heard[proc.pid] = time.monotonic()
        self._outbox[proc.pid] = outbox = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), name="caption-worker-reader", daemon=True).start()
        threading.Thread(target=self._write, args=(proc, outbox), name="caption-worker-writer", daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self._heard[proc.pid] = time.monotonic()
            msg = _parse(line)
            if msg is None or msg.get("id") is None:  # a heartbeat, or a line that is not an answer
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
            self._outbox.pop(proc.pid, None)
        self._heard.pop(proc.pid, None)

    @staticmethod
    def _write(proc: subprocess.Popen, outbox: queue.Queue) -> None:
        """Send the request lines in order; None closes the worker's stdin. A worker that stopped reading blocks this
        thread alone (until it is killed for its silence: the pipe then breaks)."""
        while True:
            line = outbox.get()
            try:
                if line is None:
                    proc.stdin.close()
                    return
                proc.stdin.write(line)
                proc.stdin.flush()
            except (OSError, ValueError):  # its pipe is closed: the reader thread tells the waiting requests
                return

    def _silent_for(self, proc: subprocess.Popen) -> float:
        heard = self._heard.get(proc.pid)
        return 0.0 if heard is None else time.monotonic() - heard

    def _kill_hung(self, proc: subprocess.Popen) -> None:
        """Kill a silent worker (SIGKILL ends a stopped process too) and start a fresh one for the next request."""
        self._hung.add(proc.pid)
        try:
            proc.kill()
            proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        with self._lock:
            if self._proc is proc:
                self._proc = None
            self._start_locked()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self, timeout: float = 10) -> None:
        """Close the worker's stdin (it exits after its requests' current batches), kill it if it does not."""
        with self._lock:
            proc, self._proc = self._proc, None
            outbox = self._outbox.get(proc.pid) if proc is not None else None
        if proc is None:
            return
        if outbox is not None:
            outbox.put(None)  # after the lines already queued
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
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
                try:
                    msg = box.get(timeout=POLL_S)
                except queue.Empty:
                    if self._silent_for(proc) > self.stall_s:
                        ended = True
                        self._kill_hung(proc)
                        raise WorkerStopped(self._hung_message()) from None
                    continue
                if "stopped" in msg:
                    if msg["proc"] != proc.pid:
                        continue
                    ended = True
                    if proc.pid in self._hung:
                        raise WorkerStopped(self._hung_message())
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

    def _hung_message(self) -> str:
        return (f"The caption worker did not answer for {self.stall_s:.0f} s (it was stopped or frozen), so it was "
                "restarted; try again. Its last messages are in the terminal that runs the app.")

    def _send(self, proc: subprocess.Popen, msg: dict) -> None:
        """Queue a request line for the worker's writer thread: never blocks, even on a worker that stopped reading."""
        outbox = self._outbox.get(proc.pid)
        if outbox is not None:  # None: it has ended, and the reader thread tells the waiting request
            outbox.put(json.dumps(msg, separators=(",", ":")) + "\n")

    def _cancel(self, proc: subprocess.Popen, rid: int, box: queue.Queue) -> None:
        self._send(proc, {"id": None, "op": "cancel", "target": rid})
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            try:
                msg = box.get(timeout=POLL_S)
            except queue.Empty:
                if self._silent_for(proc) > self.stall_s:  # a stopped worker never ends the request: do not wait on it
                    self._kill_hung(proc)
                    return
                continue
            if msg.get("end") or "error" in msg or ("stopped" in msg and msg["proc"] == proc.pid):
                return

    def load(self, bundle: Path | str, device: str = "auto") -> None:
        """Load a bundle in the worker (at once if it is loaded); BundleError says why it cannot be."""
        for _ in self.request("load", bundle=str(bundle), device=device):
            pass

    def device_report(self) -> dict:
        """core.device.report's DeviceReport as a dict, made in the worker once its warm-up is done."""
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

    def iter_captions(self, items: list[tuple[str, Path | bytes]], options: DecodeOptions = DecodeOptions(),
                      batch_size: int = 16) -> Iterator[list[CaptionResult]]:
        """As Captioner.iter_captions: results batch by batch, in order; closing it cancels the rest."""
        for chunk in _chunks(items, batch_size):
            wire = [[name, _wire(src)] for name, src in chunk]
            for msg in self.client.request("caption", bundle=self.bundle, device=self.device, items=wire,
                                           options=options.to_dict(), batch_size=batch_size):
                yield [CaptionResult.from_json(r) for r in msg["results"]]

    def caption(self, items: list[tuple[str, Path | bytes]], options: DecodeOptions = DecodeOptions(),
                batch_size: int = 16) -> list[CaptionResult]:
        return [r for batch in self.iter_captions(items, options=options, batch_size=batch_size) for r in batch]


def _parse(line: str) -> dict | None:
    """An answer line as a dict, or None. Text glued in front of it (a partial line some library printed to stdout
    before the worker's protocol began) is skipped up to the first "{"."""
    for text in (line, line[line.find("{"):] if "{" in line else ""):
        try:
            msg = json.loads(text)
        except ValueError:
            continue
        if isinstance(msg, dict):
            return msg
    return None


def _wire(src) -> dict:
    """An item's source as core.caption.worker.decode_items reads it: bytes, a path, or a refusal (core.data.images.Refused)."""
    if isinstance(src, bytes):
        return {"bytes": base64.b64encode(src).decode("ascii")}
    if isinstance(src, Refused):
        return {"refused": src.reason}
    return {"path": os.fspath(src)}


def _chunks(items: list, batch: int) -> Iterator[list]:
    """items in runs holding at most CHUNK_BYTES of image bytes as sent: base64, 4 bytes for every 3 (paths cost
    nothing). A run ends before the item that would take it past the limit, so a request carries at most
    CHUNK_BYTES unless one image alone is larger (it then goes alone). `batch` is kept for the callers: a run is
    no longer rounded up to whole batches, which made runs of 16 images of 5 MB weigh 78 MB."""
    start, size = 0, 0
    for i, (_, src) in enumerate(items):
        cost = _wire_size(src)
        if size + cost > CHUNK_BYTES and i > start:
            yield items[start:i]
            start, size = i, 0
        size += cost
    if start < len(items):
        yield items[start:]


def _wire_size(src) -> int:
    return 4 * ((len(src) + 2) // 3) if isinstance(src, bytes) else 0
