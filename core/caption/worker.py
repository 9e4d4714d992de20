"""The caption worker: a process that keeps models loaded and captions on request, `python -m core.caption.worker`.

Why a process of its own: the app's server draws pages and must stay light. Importing torch and timm and loading a
model takes about 3 s of CPU on a small machine; done in the server, it held the interpreter (the GIL) while pages
were drawn, so the first page and the first captions waited for each other. The server starts this process at once
(ui.warm, through core.caption.client) at a lower CPU priority, so it warms up on whatever CPU the browser and the
server leave free, and every page's captions come from here. The same Captioner does the work (core.nn.captioner): this
module only carries requests and results.

Protocol: JSON Lines. Requests on stdin, one per line, each with an "id"; answers on stdout with the same "id":
    {"id": 1, "op": "load", "bundle": DIR, "device": "auto"}   -> {"id": 1, "end": true}
    {"id": 2, "op": "caption", "bundle": DIR, "device": "auto",
     "items": [[name, {"path": P} | {"bytes": BASE64}], ...],
     "options": DecodeOptions.to_dict(), "batch_size": 16}     -> {"id": 2, "results": [...]} per batch, then "end"
    {"id": 3, "op": "cancel", "target": 2}                     -> the caption request stops after its current batch
    {"id": 4, "op": "device"}                                  -> {"id": 4, "device": {core.device.report.DeviceReport}}
    a failure                                                  -> {"id": N, "error": message, "kind": "BundleError"|...}
    every HEARTBEAT_S, from a thread of its own               -> {"id": null, "alive": true}
The first thing written is a bare newline, so that anything printed to stdout before the protocol started (a
library's partial line) ends there instead of being glued to the first answer. The heartbeats let the server tell
a worker that is busy (a first model load on a slow laptop) from one that is stopped or frozen (core.caption.client).
A line on stdin that is not a JSON request (not UTF-8, not an object) is answered with an error and skipped, as
are decoding options that cannot work or that this worker does not know (core.base.config.DecodeOptions.from_dict).
Requests run side by side (one thread each), so a long folder does not hold up another page's upload. The worker
exits when stdin closes: the server ended, however it ended.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from core.base.config import DecodeOptions

MAX_MODELS = 2  # loaded models kept in memory (the active one and one other)
HEARTBEAT_S = 2.0  # how often the worker says it is alive; the server gives up after many missed (worker_client)

_lock = threading.Lock()
_loading: dict[tuple, threading.Lock] = {}
_captioners: dict[tuple, object] = {}


def weights_version(bundle_path: Path) -> float:
    """The weights file's mtime: a bundle retrained in place is loaded afresh."""
    weights = Path(bundle_path) / "model.safetensors"
    return weights.stat().st_mtime if weights.exists() else 0.0


def loaded_captioner(bundle_path: Path | str, device: str = "auto"):
    """The Captioner of a bundle, loaded once per (bundle, device, weights version); waits for a load in progress."""
    key = (str(Path(bundle_path).resolve()), device, weights_version(Path(bundle_path)))
    with _lock:
        if key in _captioners:
            return _captioners[key]
        one = _loading.setdefault(key, threading.Lock())
    with one:  # a second caller (the warm-up, another page) waits for the first load instead of repeating it
        if key not in _captioners:
            from core.nn.captioner import Captioner

            loaded = Captioner(bundle_path, device=device)
            with _lock:
                while len(_captioners) >= MAX_MODELS:
                    _captioners.pop(next(iter(_captioners)))
                _captioners[key] = loaded
        return _captioners[key]


def loaded_count() -> int:
    return len(_captioners)


def forget_models() -> None:
    with _lock:
        _captioners.clear()
        _loading.clear()


def active_bundle() -> Path | None:
    """The models folder's active bundle (core.base.paths), or None when there is no model with weights yet."""
    from core.base.paths import models_dir
    from core.bundle.store import get_active

    try:
        active = get_active(models_dir())
    except Exception:  # no active.json and no default model
        return None
    return active if (active / "model.safetensors").exists() else None


def warm_up(bundle_path: Path | str) -> bool:
    """Load a bundle and caption one tiny image (a model's first forward pass sets up its kernels, once).
    False when there is no model there."""
    if not (Path(bundle_path) / "model.safetensors").exists():
        return False
    loaded_captioner(bundle_path, "auto").caption([("warm-up", tiny_jpeg())], DecodeOptions(beam=1, max_len=2))
    return True


def tiny_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buf, format="JPEG")
    return buf.getvalue()


def decode_items(items: list) -> list:
    """The wire form of iter_captions' items: [name, {"path": P} | {"bytes": base64} | {"refused": reason}]."""
    from core.data.images import Refused

    def source(src: dict):
        if "refused" in src:  # turned down by the page before decoding (too large...): the reason is the row's error
            return Refused(src["refused"])
        return Path(src["path"]) if "path" in src else base64.b64decode(src["bytes"])

    return [(name, source(src)) for name, src in items]


class Worker:
    """Reads requests from `inp`, runs each in a thread, writes answers to `out` (a line at a time, whole)."""

    def __init__(self, inp, out, warm_bundle: str | None = None):
        self.inp, self.out = inp, out
        self.write_lock = threading.Lock()
        self.cancelled: set = set()
        self.warmed = threading.Event()
        self.warm_bundle = warm_bundle
        self.gone = False  # nobody reads the answers any more (the server ended): requests stop at their next batch

    def send(self, msg: dict) -> None:
        line = json.dumps(msg, separators=(",", ":")) + "\n"
        with self.write_lock:
            try:
                self.out.write(line)
                self.out.flush()
            except (OSError, ValueError):
                self.gone = True

    def serve(self) -> None:
        """Until stdin closes; then the requests under way finish (or stop at their next batch if nobody reads)."""
        with self.write_lock:  # ends a partial line printed to stdout before the protocol began
            try:
                self.out.write("\n")
                self.out.flush()
            except (OSError, ValueError):
                self.gone = True
        threading.Thread(target=self._heartbeat, name="caption-heartbeat", daemon=True).start()
        threading.Thread(target=self._warm, name="caption-warm-up", daemon=True).start()
        running: list[threading.Thread] = []
        for line in self.inp:
            if not line.strip():
                continue
            try:
                started = self._dispatch(line)
            except Exception as e:  # whatever a line holds, the worker goes on serving the others
                self.send({"id": None, "error": f"request not understood ({e})", "kind": type(e).__name__})
                continue
            if started is not None:
                running = [t for t in running if t.is_alive()] + [started]
        for t in running:
            t.join()

    def _dispatch(self, line: str) -> threading.Thread | None:
        """One line of stdin: a cancel is done at once, any other request starts in a thread of its own."""
        try:
            req = json.loads(line)
        except ValueError:
            req = None
        if not isinstance(req, dict):
            self.send({"id": None, "error": f"not a JSON request: {line[:80]!r}", "kind": "ValueError"})
            return None
        if req.get("op") == "cancel":  # at once, in this thread: the request it names is busy in its own
            target = req.get("target")
            if isinstance(target, (int, str)) or target is None:
                self.cancelled.add(target)
            return None
        thread = threading.Thread(target=self.handle, args=(req,), name=f"request-{req.get('id')}", daemon=True)
        thread.start()
        return thread

    def _heartbeat(self) -> None:
        while not self.gone:
            self.send({"id": None, "alive": True})
            time.sleep(HEARTBEAT_S)

    def _warm(self) -> None:
        try:
            if self.warm_bundle == "active":  # found here, so that the server starts without looking
                found = active_bundle()
                self.warm_bundle = str(found) if found else None
            if self.warm_bundle:
                warm_up(self.warm_bundle)
        except Exception as e:  # a broken model is reported, in plain words, to the page that asks for it
            print(f"(the warm-up did not load {self.warm_bundle}: {e})", file=sys.stderr)
        finally:
            self.warmed.set()

    def handle(self, req: dict) -> None:
        rid = req.get("id")
        if not isinstance(rid, (int, str)):  # answers are matched by id: an id such as a list could never be
            rid = None
        try:
            op = req.get("op")
            if op == "load":
                loaded_captioner(req["bundle"], req.get("device", "auto"))
            elif op == "caption":
                self._caption(rid, req)
            elif op == "device":
                self.warmed.wait(120)  # after the model: the report then costs milliseconds (torch is imported)
                from core.device.report import device_report

                self.send({"id": rid, "device": asdict(device_report())})
            else:
                raise ValueError(f"unknown request {op!r}")
            self.send({"id": rid, "end": True})
        except Exception as e:
            self.send({"id": rid, "error": str(e) or type(e).__name__, "kind": type(e).__name__})
        finally:
            self.cancelled.discard(rid)

    def _caption(self, rid, req: dict) -> None:
        options = DecodeOptions.from_dict(req.get("options", {}))  # refused before a model loads for it
        captioner = loaded_captioner(req["bundle"], req.get("device", "auto"))
        batches = captioner.iter_captions(decode_items(req["items"]), options=options,
                                          batch_size=req.get("batch_size", 16))
        try:
            for results in batches:
                self.send({"id": rid, "results": [r.to_json() for r in results]})
                if rid in self.cancelled or self.gone:
                    break
        finally:
            batches.close()  # waits for the batch being decoded


def lower_priority(nice: int) -> None:
    """Yield the CPU to the server and the browser: on a 2-core machine this process's warm-up otherwise slows the
    first page down (bench/bench_first_impression.py). First thing, before the heavy imports."""
    import psutil

    try:
        psutil.Process().nice(psutil.BELOW_NORMAL_PRIORITY_CLASS if os.name == "nt" else nice)
    except (psutil.Error, OSError) as e:
        print(f"(could not lower the worker's priority: {e})", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Caption requests (JSON Lines) on stdin, answers on stdout. Started by "
                                            "the app's server (core.caption.client); exits when stdin closes.")
    p.add_argument("--warm", default=None, help="a model folder to load (and caption one tiny image with) at once; "
                                                "'active': the active model of the models folder (core.base.paths)")
    p.add_argument("--nice", type=int, default=0, help="run at this lower CPU priority (a nice value, 1-19; on "
                                                        "Windows any value above 0 means 'below normal')")
    args = p.parse_args(argv)
    if args.nice > 0:
        lower_priority(args.nice)
    # stdout carries the answers alone: anything else printed (by this code or a library) goes to stderr
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    # bytes that are not UTF-8 become U+FFFD: that line is refused as a request, the stream goes on
    inp = open(sys.stdin.fileno(), encoding="utf-8", errors="replace", closefd=False)
    Worker(inp, out, args.warm).serve()


if __name__ == "__main__":
    main()
