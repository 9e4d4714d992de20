"""The run folder: its file names, its events, the writer the trainer uses and the readers the app uses.

A run folder holds config.json (the TrainConfig), progress.jsonl (one JSON event per line, appended by the
trainer), train.log (the trainer's output), job.json (pid + start time of the process that works on it),
STOP (a request to checkpoint and exit), checkpoint.safetensors and best/ (the best epoch's bundle).
No torch here, and no import of the trainer: the web process reads runs to draw them.
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from core.base import process
from core.base.files import atomic_write_json, read_json_lines

CONFIG = "config.json"
PROGRESS = "progress.jsonl"
STOP = "STOP"
LOG = "train.log"
JOB = "job.json"
CHECKPOINT = "checkpoint.safetensors"
VOCAB = "vocab.json"
BEST = "best"
RUN_LOCK = ".run.lock"  # held by the trainer working on the folder, for its life (rank 0 under torchrun)
RUN_OWNER = ".run.owner.json"  # pid + start time of that trainer: who holds the lock, for the message

# Events (schema: docs/core_api.md). Every event has "event" and "time".
START, PHASE, ENCODE, STEP, SAMPLE, EPOCH, SAVED, RESUMED, LOG_EVENT = (
    "start", "phase", "encode", "step", "sample", "epoch", "checkpoint", "resumed", "log")
STOPPED, DONE, ERROR = "stopped", "done", "error"
FINAL_EVENTS = (DONE, STOPPED, ERROR)
LIVE = ("running", "starting", "stopping")  # run_status values of a run whose trainer is still at work
# Why a trainer stops early (the "stopped" event's "reason"): the Stopper's three triggers. Under torchrun the ranks
# agree on a reason by its place in STOP_REASONS (core.nn.distributed.agree_stop), so the trainer passes this tuple.
REASON_STOP_FILE, REASON_SIGTERM, REASON_LAUNCHER_GONE = "stop file", "SIGTERM", "launcher gone"
STOP_REASONS = (REASON_STOP_FILE, REASON_SIGTERM, REASON_LAUNCHER_GONE)


# --- writing (the trainer's side) -----------------------------------------------------------------------


class Reporter:
    """Appends events to progress.jsonl and passes them to any other listeners (minGPT-style callbacks).

    Under torchrun rank 0 writes every event; another rank writes one, its error (with "rank"), and exits.
    Each event is one write() to a file opened for appending, so lines of two processes do not interleave.
    """

    def __init__(self, run_dir: Path, listeners: list[Callable[[dict], None]] = ()):
        self.path = Path(run_dir) / PROGRESS
        self.listeners = list(listeners)

    def __call__(self, event: str, **fields) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with open(self.path, "ab", buffering=0) as f:  # unbuffered: the line goes out in one write()
            f.write((json.dumps(record) + "\n").encode("utf-8"))
        for listen in self.listeners:
            listen(record)


class Stopper:
    """A STOP file in the run folder, or SIGTERM, asks the trainer to checkpoint and exit.

    Create it before the first event of an attempt. A STOP older than the folder's last event was left by an
    earlier attempt and is removed; any other STOP, even one given before this process got here, is honoured.
    Under torchrun only rank 0's Stopper owns the file (removes a stale one, consumes it); the other ranks'
    only watch, since they may start after rank 0's first event and would take a fresh STOP for a stale one.
    """

    def __init__(self, run_dir: Path, owner: bool = True, watch_parent: bool = False):
        self.file = Path(run_dir) / STOP
        self.reason = None
        self.owner = owner
        # Under torchrun: the launcher is this process's parent. Killed outright (SIGKILL, the OOM killer), it can
        # no longer stop its ranks, which would train on as orphans holding the run's lock; on POSIX an orphan is
        # re-parented, so a changed parent pid means "stop as if asked": checkpoint, release the lock, exit.
        self.parent = os.getppid() if watch_parent and os.name == "posix" else None
        last = last_event_time(run_dir) if owner else None
        try:
            if last is not None and self.file.stat().st_mtime <= last:
                self.file.unlink(missing_ok=True)
        except OSError:
            pass
        if hasattr(signal, "SIGTERM"):
            try:
                signal.signal(signal.SIGTERM, self._on_sigterm)
            except ValueError:  # not the main thread (e.g. called from a test thread): STOP file only
                pass

    def _on_sigterm(self, *_):
        self.reason = REASON_SIGTERM

    def __call__(self) -> bool:
        if self.reason is None and self.file.exists():
            self.reason = REASON_STOP_FILE
        if self.reason is None and self.parent is not None and os.getppid() != self.parent:
            self.reason = REASON_LAUNCHER_GONE
        return self.reason is not None

    def consume(self) -> None:
        """The stop was carried out: the request is spent (a later resume must not stop on it)."""
        if self.owner:
            self.file.unlink(missing_ok=True)


class RunInUse(RuntimeError):
    """Another trainer works on this run folder; the message says which process."""


def hold_run_lock(run_dir: Path) -> FileLock:
    """Take the run folder's OS lock without waiting, for the trainer's life (released by the OS however the process
    ends); RunInUse naming the holder when another trainer has it. Two trainers on one folder would interleave
    events, write one checkpoint together and publish two models."""
    run_dir = Path(run_dir)
    lock = FileLock(str(run_dir / RUN_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunInUse(f"The run folder {run_dir} is in use by another trainer ({run_holder(run_dir)}); this one does "
                       "not start. Stop that one first, or give another --run-dir.") from None
    atomic_write_json(run_dir / RUN_OWNER, {"pid": os.getpid(), "start_time": process.start_time(os.getpid())})
    return lock


def run_holder(run_dir: Path) -> str:
    """The trainer that holds the run folder's lock, in words: "process 1234, started 19:02:11"."""
    try:
        owner = json.loads((Path(run_dir) / RUN_OWNER).read_text(encoding="utf-8"))
        pid, started = owner["pid"], owner["start_time"]
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not recorded itself yet"
    if not process.is_alive(pid, started):  # the holder started a moment ago and has not recorded itself yet
        return "a process that has not recorded itself yet"
    return f"process {pid}, started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}"


def clean_partial_writes(run_dir: Path) -> list[Path]:
    """Remove temporary files a killed atomic write left behind (core.base.files names them .<name>.*.tmp)."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / BEST):
        for tmp in folder.glob(".*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


# --- the job record -------------------------------------------------------------------------------------


@dataclass
class Job:
    """The process working on a run folder (job.json): identified by pid *and* start time."""

    run_dir: Path
    pid: int
    start_time: float | None
    started_at: float
    command: list[str] = field(default_factory=list)
    resumed: bool = False
    stop_requested_at: float | None = None

    @property
    def name(self) -> str:
        return self.run_dir.name

    def alive(self) -> bool:
        return process.is_alive(self.pid, self.start_time)

    def save(self) -> None:
        d = {k: v for k, v in self.__dict__.items() if k != "run_dir"}
        atomic_write_json(self.run_dir / JOB, d)

    @classmethod
    def load(cls, run_dir: Path | str) -> "Job | None":
        run_dir = Path(run_dir)
        try:
            d = json.loads((run_dir / JOB).read_text(encoding="utf-8"))
            start = d.pop("start_time", None)
            return cls(run_dir=run_dir, start_time=float(start) if start is not None else None, **d)
        except (OSError, ValueError, TypeError):
            return None


# --- reading (the app's side) ---------------------------------------------------------------------------


def read_progress(run_dir: Path | str) -> list[dict]:
    """All events of a run; a missing file is no events, a half-written last line (mid-write) is skipped."""
    return read_json_lines(Path(run_dir) / PROGRESS)


def attempt_errors(run_dir: Path | str) -> list[dict]:
    """The error events of the latest attempt; under torchrun those of ranks above 0 carry their "rank"."""
    events = read_progress(run_dir)
    starts = [i for i, e in enumerate(events) if e.get("event") == START]
    return [e for e in events[starts[-1] + 1 if starts else 0:] if e.get("event") == ERROR]


def last_event_time(run_dir: Path | str) -> float | None:
    times = [e.get("time") for e in read_progress(run_dir)]
    times = [t for t in times if isinstance(t, (int, float))]
    return max(times) if times else None


def read_run_config(run_dir: Path | str) -> dict:
    """The run's config.json (a TrainConfig as a dict); {} when it is missing or damaged, never an error, since
    the Train page draws every run folder. (A model bundle's config, checked, is core.bundle.store.read_config.)"""
    try:
        config = json.loads((Path(run_dir) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def tail_log(run_dir: Path | str, lines: int = 20, max_bytes: int = 64_000) -> list[str]:
    path = Path(run_dir) / LOG
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [ln.rstrip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()][-lines:]


def run_status(run_dir: Path | str, events: list[dict] | None = None) -> str:
    """starting | running | stopping | stopped | done | error | crashed (the process ended without a last word)."""
    run_dir = Path(run_dir)
    events = read_progress(run_dir) if events is None else events
    job = Job.load(run_dir)
    # After a resume the earlier attempt's "stopped" is history: only events after the last "start" count.
    last = next((e["event"] for e in reversed(events) if e.get("event") in FINAL_EVENTS + (START,)), None)
    if job is not None and job.alive():
        if last in FINAL_EVENTS:
            return "stopping" if last == STOPPED else last  # writing its last lines, about to exit
        if job.stop_requested_at is not None:
            return "stopping"
        return "running" if last == START else "starting"
    if last in FINAL_EVENTS:
        return last
    return "crashed" if job is not None else "stopped"


@dataclass
class RunInfo:
    name: str
    path: Path
    status: str
    config: dict
    started_at: float | None
    metrics: dict  # the last epoch's (or the final) metrics
    bundle: str | None  # the model folder a finished run wrote
    resumable: bool


def run_info(run_dir: Path | str) -> RunInfo:
    run_dir = Path(run_dir)
    events = read_progress(run_dir)
    config = read_run_config(run_dir)
    status = run_status(run_dir, events)
    metrics, bundle = {}, None
    for e in events:
        if e.get("event") == EPOCH:
            metrics = e.get("metrics") or metrics
        elif e.get("event") == DONE:
            metrics, bundle = e.get("metrics") or metrics, e.get("bundle")
    job = Job.load(run_dir)
    started = job.started_at if job else next((e.get("time") for e in events if e.get("event") == START), None)
    resumable = status in ("stopped", "error", "crashed") and bool(config)
    return RunInfo(run_dir.name, run_dir, status, config, started, metrics, bundle, resumable)


def list_runs(root: Path | str) -> list[RunInfo]:
    """Every run folder (one with a config.json) under `root`, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [run_info(p) for p in root.iterdir() if p.is_dir() and (p / CONFIG).is_file()]
    return sorted(runs, key=lambda r: (r.started_at or 0, r.name), reverse=True)


@dataclass
class RunProgress:
    """What the Train page's monitor draws, distilled from a training run's events: the latest attempt's phase and
    bar, and the history for the charts. (A photo library's counts are core.caption.library.Progress.)"""

    phase: str = "starting"
    fraction: float = 0.0  # of the current phase's work
    label: str = ""
    eta_s: float | None = None
    images_per_s: float | None = None
    losses: list[dict] = field(default_factory=list)  # {"step", "loss"}
    epochs: list[dict] = field(default_factory=list)  # {"epoch", "train_loss", <metric>: value}
    samples: list[dict] = field(default_factory=list)
    error: str | None = None
    final: dict | None = None  # the done/stopped/error event, if any
    messages: list[str] = field(default_factory=list)


def summarize(events: list[dict]) -> RunProgress:
    p = RunProgress()
    for e in events:
        kind = e.get("event")
        if kind == START:
            p.phase, p.final, p.error = "starting", None, None
        elif kind == PHASE:
            before, p.phase = p.phase, e.get("phase", p.phase)
            if {before, p.phase} & {"starting", "loading", "encoding"}:  # the bar counts images, then steps
                p.fraction, p.eta_s, p.label = 0.0, None, ""
        elif kind == ENCODE:
            total = max(int(e.get("total") or 0), 1)
            p.fraction = min(1.0, float(e.get("done", 0)) / total)
            p.label = f"encoding images {e.get('done', 0)}/{e.get('total', 0)}"
            p.eta_s, p.images_per_s = e.get("eta_s"), e.get("images_per_s")
        elif kind == STEP:
            total = max(int(e.get("total_steps") or 0), 1)
            p.fraction = min(1.0, float(e.get("step", 0)) / total)
            p.label = f"epoch {e.get('epoch')}/{e.get('epochs')}, step {e.get('step')}/{e.get('total_steps')}"
            p.eta_s, p.images_per_s = e.get("eta_s"), e.get("images_per_s")
            if e.get("loss") is not None:
                p.losses.append({"step": e.get("step"), "loss": e["loss"]})
        elif kind == EPOCH:
            p.epochs.append({"epoch": e.get("epoch"), "train_loss": e.get("train_loss"), **(e.get("metrics") or {})})
        elif kind == SAMPLE:
            p.samples = e.get("samples") or []
        elif kind == LOG_EVENT and e.get("message"):
            p.messages = (p.messages + [str(e["message"])])[-10:]
        elif kind in FINAL_EVENTS:
            p.final = e
            p.phase = kind
            if kind == DONE:
                p.fraction, p.eta_s = 1.0, 0.0
            if kind == ERROR:
                p.error = e.get("message") or "Training failed."
    return p


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "unknown"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


# --- the Train form's last values (one JSON file beside the run folders) ---------------------------------

FORM_MEMORY = "last_form.json"  # not a run folder (list_runs reads folders only)
MAX_FORM_BYTES = 100_000


def save_form_values(root: Path | str, values: dict) -> None:
    """Remember the Train form's values (plain JSON types only), so that the next visit starts from them."""
    plain = {k: v for k, v in values.items() if isinstance(v, (str, int, float, bool))}
    atomic_write_json(Path(root) / FORM_MEMORY, plain)


def load_form_values(root: Path | str) -> dict:
    """The values save_form_values kept; {} when there are none or the file is damaged (the form's defaults)."""
    path = Path(root) / FORM_MEMORY
    try:
        if path.stat().st_size > MAX_FORM_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
