"""Loaded models, shared by every session of the server, and their warm-up in a background thread.

A thread imports the pages' modules and torch, loads the active model, runs one tiny caption, then reports the
compute device, so that neither the Home page (which never imports torch) nor the first caption waits for it.
`python -m ui.serve` (the launchers' start command) starts it before the server on 4+ CPU cores; on fewer, and under a
plain `streamlit run app.py`, the first page drawn starts it. No Streamlit here: the thread has no page to draw on.
"""
from __future__ import annotations

import threading
from pathlib import Path

_lock = threading.Lock()
_loading: dict[tuple, threading.Lock] = {}
_captioners: dict[tuple, object] = {}
_device: dict = {}
_started = threading.Event()
_device_done = threading.Event()
_warmed = threading.Event()  # the warm-up has loaded the model (or given up)
_model_loaded = threading.Event()  # ... and it did load one: torch is imported in this process
MAX_MODELS = 2  # loaded models kept in memory (the active one and one other)
# What the pages import (pandas, PIL and numpy among them: about a second on a small CPU), imported by the warm-up
# before torch, so that the first visit of each page finds them loaded. Torch-free, as the pages are.
PAGE_MODULES = ("core.bundle", "core.data", "core.paths", "core.library", "core.jobs", "core.runs", "ui.device",
                "ui.loader", "ui.nav", "ui.inputs", "ui.images", "ui.results", "ui.review", "ui.library_view",
                "ui.monitor")


def weights_version(bundle_path: Path) -> float:
    """The weights file's mtime: a bundle retrained in place is loaded afresh."""
    weights = Path(bundle_path) / "model.safetensors"
    return weights.stat().st_mtime if weights.exists() else 0.0


def captioner(bundle_path: Path | str, device: str = "auto"):
    """The Captioner of a bundle, loaded once per (bundle, device, weights version); waits for a load in progress."""
    key = (str(Path(bundle_path).resolve()), device, weights_version(Path(bundle_path)))
    with _lock:
        if key in _captioners:
            return _captioners[key]
        one = _loading.setdefault(key, threading.Lock())
    with one:  # a second caller (the warm-up, another session) waits for the first load instead of repeating it
        if key not in _captioners:
            from core.caption import Captioner

            loaded = Captioner(bundle_path, device=device)
            with _lock:
                while len(_captioners) >= MAX_MODELS:
                    _captioners.pop(next(iter(_captioners)))
                _captioners[key] = loaded
        return _captioners[key]


def device_info() -> dict | None:
    """core.device's DeviceReport as a dict once the warm-up has made it, else None; {"error": message} if that failed."""
    return dict(_device) if _device else None


def wait_for_device(timeout: float) -> bool:
    return _device_done.wait(timeout)


def _look_at_device() -> None:
    # In this process, once the model is loaded: torch is imported by then and "auto" has looked at the GPU to load
    # it, so the report costs milliseconds. A subprocess (as ui.device does for pages that must not load torch)
    # imported torch a second time, 2-3 s of CPU that competed with the first captions on 2 cores (measured with
    # bench/bench_first_impression.py). The Home page shows "looking..." until then.
    # Without a loaded model (none yet, or a broken one) the server has no other use for torch: the report is made
    # in a subprocess then, as before, and the server stays light.
    _warmed.wait(60)
    try:
        from dataclasses import asdict

        from core.device import device_report, device_report_subprocess

        _device.update(asdict(device_report() if _model_loaded.is_set() else device_report_subprocess()))
    except Exception as e:
        _device["error"] = str(e)
    finally:
        _device_done.set()


def _warm() -> None:
    from core.bundle import get_active
    from core.paths import models_dir

    active = get_active(models_dir())
    if (active / "model.safetensors").exists():
        # one tiny caption too: the first forward pass of a model sets up its kernels, which costs time once
        captioner(active, "auto").caption([("warm-up", _tiny_jpeg())], beam=1, max_len=2)
        _model_loaded.set()


def _tiny_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buf, format="JPEG")
    return buf.getvalue()


def _import_pages() -> None:
    import importlib

    for name in PAGE_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # a page that cannot import says so itself, in its own words
            pass


def _run() -> None:
    try:
        _import_pages()
        _warm()
    except Exception:  # a broken model is reported, in plain words, by the page that uses it
        pass
    finally:
        _warmed.set()


def start() -> None:
    """Start the warm-up once per server process; returns at once."""
    with _lock:
        if _started.is_set():
            return
        _started.set()
    threading.Thread(target=_look_at_device, name="caption-device-report", daemon=True).start()
    threading.Thread(target=_run, name="caption-warm-up", daemon=True).start()


def reset() -> None:
    """Forget the device report and start afresh on the next page (tests; a server restart does this too)."""
    with _lock:
        _device.clear()
        _device_done.clear()
        _warmed.clear()
        _model_loaded.clear()
        _started.clear()
