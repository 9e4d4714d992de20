"""Loaded models for the pages and their warm-up, shared by every session of the server.

The models live in the caption worker, a process of its own (core.caption.worker says why), which start() launches: the
launchers' `python -m ui.serve` calls it before the server starts, and under a plain `streamlit run app.py` the first
page does. The worker loads the active model at once, at a lower CPU priority, while the server and the browser draw
the first page; the pages then get their captions from it through `captioner()`. Here, in the server, a thread asks
the worker for the compute-device report, once its model is loaded, and another one, started once Home is drawn
(preload_pages), imports the other pages' modules, so that their first visit finds them loaded. No Streamlit here:
the threads have no page to draw on.

CAPTION_WORKER=0 keeps the models in the server's own process instead (a thread loads the active model there), as
before the worker existed; tests that stub torch in the server's process use it.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from core.base.paths import WORKER_ENV

_lock = threading.Lock()
_client = None  # core.caption.client.WorkerClient, once started
_device: dict = {}
_started = threading.Event()
_device_done = threading.Event()
_warmed = threading.Event()  # the warm-up has loaded the model (or given up)
_model_loaded = threading.Event()  # ... in this process (CAPTION_WORKER=0) and it did load one: torch is imported here
# What the pages import (pandas, PIL and numpy among them: about a second on a small CPU), imported in a thread, so
# that the first visit of each page finds them loaded. Torch-free, as the pages are.
PAGE_MODULES = ("core.bundle.store", "core.data.images", "core.data.datasets", "core.base.paths", "core.caption.library",
                "core.runs.jobs", "core.runs.folder", "ui.device",
                "ui.loader", "ui.nav", "ui.inputs", "ui.images", "ui.results", "ui.review", "ui.library_view",
                "ui.monitor")


def use_worker() -> bool:
    return os.environ.get(WORKER_ENV, "").strip() != "0"


def captioner(bundle_path: Path | str, device: str = "auto"):
    """What the pages caption with: a Captioner-like handle on the bundle loaded in the worker (or, with
    CAPTION_WORKER=0, the Captioner in this process). Raises BundleError when the model cannot be loaded."""
    if use_worker():
        return client().captioner(bundle_path, device)
    from core.caption.worker import loaded_captioner

    return loaded_captioner(bundle_path, device)


def client():
    """The server's one WorkerClient, started if need be (and started again if the worker ended)."""
    global _client
    with _lock:
        if _client is None:
            from core.caption.client import WorkerClient

            _client = WorkerClient(warm="active")  # the worker looks for it: the server starts without importing it
        _client.start()
        return _client


def device_info() -> dict | None:
    """core.device.report's DeviceReport as a dict once the warm-up has made it, else None; {"error": message} if that failed."""
    return dict(_device) if _device else None


def wait_for_device(timeout: float) -> bool:
    return _device_done.wait(timeout)


def _look_at_device() -> None:
    # Made where torch is imported anyway, once the model is loaded, so that it costs milliseconds and does not
    # compete with the first captions: in the worker; with CAPTION_WORKER=0 in this process once the warm-up loaded
    # the model, else in a subprocess (the server has no other use for torch then, and stays light).
    try:
        from dataclasses import asdict

        if use_worker():
            _device.update(client().device_report())
        else:
            from core.device.report import device_report, device_report_subprocess

            _warmed.wait(60)
            _device.update(asdict(device_report() if _model_loaded.is_set() else device_report_subprocess()))
    except Exception as e:
        _device["error"] = str(e)
    finally:
        _warmed.set()
        _device_done.set()


def _warm_here() -> None:
    """CAPTION_WORKER=0: load the active model in this process, and caption one tiny image with it."""
    from core.caption.worker import active_bundle, warm_up

    try:
        active = active_bundle()
        if active is not None and warm_up(active):
            _model_loaded.set()
    except Exception:  # a broken model is reported, in plain words, by the page that uses it
        pass
    finally:
        _warmed.set()


def _import_pages() -> None:
    import importlib

    for name in PAGE_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # a page that cannot import says so itself, in its own words
            pass


_preloading = threading.Event()


def preload_pages() -> None:
    """Import the pages' modules in a thread, once (Home calls it when it is drawn): in the server's interpreter
    this competes with drawing a page, so it waits for the first one (bench/bench_first_impression.py)."""
    with _lock:
        if _preloading.is_set():
            return
        _preloading.set()
    threading.Thread(target=_import_pages, name="caption-page-imports", daemon=True).start()


def _run_here() -> None:
    _import_pages()
    _warm_here()


def start() -> None:
    """Start the warm-up once per server process; returns at once."""
    with _lock:
        if _started.is_set():
            return
        _started.set()
    if use_worker():
        client()  # the pages' modules are imported by preload_pages(), once the first page is drawn
    else:
        threading.Thread(target=_run_here, name="caption-warm-up", daemon=True).start()
    threading.Thread(target=_look_at_device, name="caption-device-report", daemon=True).start()


def reset() -> None:
    """Stop the worker, forget the loaded models and the device report; the next page starts afresh (tests)."""
    global _client
    with _lock:
        if _client is not None:
            _client.stop()
            _client = None
        _device.clear()
        _device_done.clear()
        _warmed.clear()
        _model_loaded.clear()
        _started.clear()
        _preloading.clear()
    from core.caption import worker

    worker.forget_models()
