"""Background training jobs: start, attach, stop, resume, list runs. No Streamlit here.

A job is `python -m core.train` in its own session (it outlives the web server), writing into a run
folder under the runs dir: config.json, train.log, progress.jsonl (core.train's events) and job.json
(pid + the process's start time, so a recycled pid is never mistaken for the job). One job at a time:
RUNS_DIR/train.lock names the live job; a lock whose process is gone is stale and gets cleared.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.files import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_COMMAND = (sys.executable, "-m", "core.train")
LOCK_NAME = "train.lock"
JOB_NAME = "job.json"
STOP_NAME = "STOP"
LOG_NAME = "train.log"
FINAL_EVENTS = ("done", "stopped", "error")

_children: dict[int, subprocess.Popen] = {}  # processes started by this server, polled so they never linger as zombies


class JobError(RuntimeError):
    """A job cannot be started or resumed; the message is in plain words."""


def runs_dir() -> Path:
    return Path(os.environ.get("CAPTION_RUNS_DIR") or REPO_ROOT / "runs")


def models_dir() -> Path:
    env = os.environ.get("CAPTION_MODELS_DIR")
    if env:
        return Path(env)
    from core.bundle import MODELS_DIR  # imported late: core.bundle pulls in torch

    return Path(MODELS_DIR)


def cache_dir() -> Path:
    """Where the trainer keeps encoded image features (shared by runs on the same dataset and backbone)."""
    return Path(os.environ.get("CAPTION_CACHE_DIR") or REPO_ROOT / ".cache" / "features")


# --- liveness -------------------------------------------------------------------------------------------


def process_start_time(pid: int) -> str | None:
    """When `pid` started, as an opaque string (Linux: ticks since boot; Windows: creation time), else None."""
    if os.name == "nt":
        return _windows_process(pid)[1]
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields_ = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields_[19] if len(fields_) > 19 else None  # field 22 of proc(5); fields_[0] is field 3


def _windows_process(pid: int) -> tuple[bool, str | None]:
    """(alive, creation time) through the Win32 API: os.kill(pid, 0) would send Ctrl+C there."""
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5, None  # ERROR_ACCESS_DENIED: it exists, owned by someone else
    try:
        code = wintypes.DWORD()
        times = [wintypes.FILETIME() for _ in range(4)]
        alive = bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
        if not kernel32.GetProcessTimes(handle, *(ctypes.byref(t) for t in times)):
            return alive, None
        return alive, str((times[0].dwHighDateTime << 32) | times[0].dwLowDateTime)
    finally:
        kernel32.CloseHandle(handle)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[:1] == ["Z"]


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            _children.pop(pid, None)
        return
    if os.name == "nt":
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass  # not our child: its own parent (or init) reaps it


def pid_alive(pid: int | None, start_time: str | None = None) -> bool:
    """True when `pid` runs and, where its start time can be read (Linux, Windows), is the process recorded."""
    if not pid or pid <= 0:
        return False
    _reap(pid)
    if os.name == "nt":
        if not _windows_process(pid)[0]:
            return False
    else:
        try:
            os.kill(pid, 0)  # elsewhere (macOS) this existence check is all there is
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else
        except OSError:
            return False
        if _zombie(pid):
            return False
    if start_time is not None:
        now = process_start_time(pid)
        if now is not None and now != str(start_time):
            return False  # the pid was recycled
    return True


# --- run folders ----------------------------------------------------------------------------------------


@dataclass
class Job:
    """A training process attached to its run folder."""

    run_dir: Path
    pid: int
    start_time: str | None
    started_at: float
    command: list[str] = field(default_factory=list)
    resumed: bool = False
    stop_requested_at: float | None = None

    @property
    def name(self) -> str:
        return self.run_dir.name

    def alive(self) -> bool:
        return pid_alive(self.pid, self.start_time)

    def save(self) -> None:
        d = {k: v for k, v in self.__dict__.items() if k != "run_dir"}
        atomic_write_json(self.run_dir / JOB_NAME, d)

    @classmethod
    def load(cls, run_dir: Path | str) -> "Job | None":
        run_dir = Path(run_dir)
        try:
            d = json.loads((run_dir / JOB_NAME).read_text())
            return cls(run_dir=run_dir, **d)
        except (OSError, ValueError, TypeError):
            return None


def read_events(run_dir: Path | str) -> list[dict]:
    """core.train's progress events; tolerant of a missing file and of a half-written last line."""
    try:
        from core.train import read_progress
    except ImportError:
        read_progress = None
    if read_progress is not None:
        return read_progress(run_dir)
    events = []
    try:
        lines = (Path(run_dir) / "progress.jsonl").read_text(errors="replace").splitlines()
    except OSError:
        return events
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def tail_log(run_dir: Path | str, lines: int = 20, max_bytes: int = 64_000) -> list[str]:
    path = Path(run_dir) / LOG_NAME
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
    events = read_events(run_dir) if events is None else events
    job = Job.load(run_dir)
    # After a resume the earlier run's "stopped" is history: only events after the last "start" count.
    last = next((e["event"] for e in reversed(events) if e.get("event") in FINAL_EVENTS + ("start",)), None)
    if job is not None and job.alive():
        if last in FINAL_EVENTS:
            return "stopping" if last == "stopped" else last  # writing its last lines, about to exit
        if job.stop_requested_at is not None:
            return "stopping"
        return "running" if last == "start" else "starting"
    if last in FINAL_EVENTS:
        return last
    return "crashed" if job is not None else "stopped"


# --- the lock -------------------------------------------------------------------------------------------


def _lock_path(root: Path) -> Path:
    return root / LOCK_NAME


def _read_lock(root: Path) -> dict | None:
    try:
        return json.loads(_lock_path(root).read_text())
    except (OSError, ValueError):
        return None


def _lock_live(lock: dict | None) -> bool:
    return bool(lock) and pid_alive(lock.get("pid"), lock.get("start_time"))


def _acquire_lock(root: Path, run_dir: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    me = {"run_dir": str(run_dir), "pid": os.getpid(), "start_time": process_start_time(os.getpid())}
    for _ in range(2):
        try:
            fd = os.open(_lock_path(root), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            lock = _read_lock(root)
            if lock is None:  # being written right now by another starter, or garbage
                time.sleep(0.2)
                lock = _read_lock(root)
            if _lock_live(lock):
                raise JobError(f"A training run is already going ({Path(lock['run_dir']).name}). Stop it first.")
            _lock_path(root).unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return
    raise JobError("Could not take the training lock; try again.")


def _release_lock(root: Path, run_dir: Path) -> None:
    lock = _read_lock(root)
    if lock is not None and Path(lock.get("run_dir", "")) == run_dir:
        _lock_path(root).unlink(missing_ok=True)


def current_job(root: Path | str | None = None) -> Job | None:
    """The live job named by the lock (re-attach after a reload or server restart); clears a stale lock."""
    root = Path(root) if root is not None else runs_dir()
    lock = _read_lock(root)
    if lock is None:
        return None
    job = Job.load(lock.get("run_dir", ""))
    if job is not None and job.alive():
        return job
    if _lock_live(lock):  # a starter between taking the lock and writing job.json
        return None
    _lock_path(root).unlink(missing_ok=True)
    return None


# --- start, stop, resume --------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:40] or "run"


def new_run_dir(root: Path, model_name: str = "") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{_slug(model_name)}"
    for i in range(1000):
        path = root / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise JobError("Could not create a run folder.")


def _launch(run_dir: Path, root: Path, command, resume: bool) -> Job:
    cmd = [*(command or TRAIN_COMMAND), "--config", str(run_dir / "config.json"), "--run-dir", str(run_dir)]
    if resume:
        cmd.append("--resume")
    _acquire_lock(root, run_dir)
    try:
        (run_dir / STOP_NAME).unlink(missing_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        with (run_dir / LOG_NAME).open("ab") as log:
            # its own session (process group on Windows): a Ctrl+C or restart of the server does not kill it
            detach = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt"
                      else {"start_new_session": True})
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, **detach)
        _children[proc.pid] = proc
        job = Job(run_dir, proc.pid, process_start_time(proc.pid), time.time(), cmd, resume)
        job.save()
        atomic_write_json(_lock_path(root), {"run_dir": str(run_dir), "pid": job.pid, "start_time": job.start_time})
        return job
    except BaseException:
        _release_lock(root, run_dir)
        raise


def start_job(config: dict, root: Path | str | None = None, command=None) -> Job:
    """Write config.json into a new run folder and start the trainer there.

    `command` replaces `python -m core.train` (tests pass a fake trainer); `--config`, `--run-dir` and
    `--resume` are appended to it.
    """
    root = Path(root) if root is not None else runs_dir()
    live = current_job(root)
    if live is not None:
        raise JobError(f"A training run is already going ({live.name}). Stop it first.")
    run_dir = new_run_dir(root, str(config.get("model_name", "")))
    atomic_write_json(run_dir / "config.json", config)
    try:
        return _launch(run_dir, root, command, resume=False)
    except JobError:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


def resume_job(run_dir: Path | str, root: Path | str | None = None, command=None) -> Job:
    run_dir = Path(run_dir)
    root = Path(root) if root is not None else run_dir.parent
    if not (run_dir / "config.json").is_file():
        raise JobError(f"{run_dir.name} has no config.json; it cannot be resumed.")
    status = run_status(run_dir)
    if status in ("running", "starting", "stopping"):
        raise JobError(f"{run_dir.name} is still running.")
    if status == "done":
        raise JobError(f"{run_dir.name} has finished; start a new run instead.")
    return _launch(run_dir, root, command, resume=True)


def stop_job(job: Job) -> None:
    """Ask the trainer to checkpoint and exit (the STOP file); `enforce_stop` sends SIGTERM if it does not."""
    (job.run_dir / STOP_NAME).write_text("stop requested\n")
    job.stop_requested_at = time.time()
    job.save()


def enforce_stop(job: Job, grace_s: float = 60.0) -> bool:
    """SIGTERM the job's process group when a requested stop has not happened within `grace_s`. True if sent."""
    if job.stop_requested_at is None or time.time() - job.stop_requested_at < grace_s or not job.alive():
        return False
    try:
        os.killpg(job.pid, signal.SIGTERM)  # the job leads its own session, so its group is its pid
    except (ProcessLookupError, PermissionError, AttributeError):  # AttributeError: no killpg on Windows
        try:
            os.kill(job.pid, signal.SIGTERM)
        except OSError:
            return False
    return True


def wait_for_exit(job: Job, timeout: float) -> bool:
    deadline = time.time() + timeout
    while job.alive():
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True


# --- reading a run --------------------------------------------------------------------------------------


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
    events = read_events(run_dir)
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    status = run_status(run_dir, events)
    metrics, bundle = {}, None
    for e in events:
        if e.get("event") == "epoch":
            metrics = e.get("metrics") or metrics
        elif e.get("event") == "done":
            metrics, bundle = e.get("metrics") or metrics, e.get("bundle")
    job = Job.load(run_dir)
    started = job.started_at if job else next((e.get("time") for e in events if e.get("event") == "start"), None)
    resumable = status in ("stopped", "error", "crashed") and bool(config)
    return RunInfo(run_dir.name, run_dir, status, config, started, metrics, bundle, resumable)


def list_runs(root: Path | str | None = None) -> list[RunInfo]:
    """Every run folder (one with a config.json), newest first."""
    root = Path(root) if root is not None else runs_dir()
    if not root.is_dir():
        return []
    runs = [run_info(p) for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    return sorted(runs, key=lambda r: (r.started_at or 0, r.name), reverse=True)


@dataclass
class Progress:
    """What the monitor draws, distilled from the events of the latest attempt (and history for charts)."""

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


def summarize(events: list[dict]) -> Progress:
    p = Progress()
    for e in events:
        kind = e.get("event")
        if kind == "start":
            p.phase, p.final, p.error = "starting", None, None
        elif kind == "phase":
            before, p.phase = p.phase, e.get("phase", p.phase)
            if {before, p.phase} & {"starting", "loading", "encoding"}:  # the bar counts images, then steps
                p.fraction, p.eta_s, p.label = 0.0, None, ""
        elif kind == "encode":
            total = max(int(e.get("total") or 0), 1)
            p.fraction = min(1.0, float(e.get("done", 0)) / total)
            p.label = f"encoding images {e.get('done', 0)}/{e.get('total', 0)}"
            p.eta_s, p.images_per_s = e.get("eta_s"), e.get("images_per_s")
        elif kind == "step":
            total = max(int(e.get("total_steps") or 0), 1)
            p.fraction = min(1.0, float(e.get("step", 0)) / total)
            p.label = f"epoch {e.get('epoch')}/{e.get('epochs')}, step {e.get('step')}/{e.get('total_steps')}"
            p.eta_s, p.images_per_s = e.get("eta_s"), e.get("images_per_s")
            if e.get("loss") is not None:
                p.losses.append({"step": e.get("step"), "loss": e["loss"]})
        elif kind == "epoch":
            p.epochs.append({"epoch": e.get("epoch"), "train_loss": e.get("train_loss"), **(e.get("metrics") or {})})
        elif kind == "sample":
            p.samples = e.get("samples") or []
        elif kind == "log" and e.get("message"):
            p.messages = (p.messages + [str(e["message"])])[-10:]
        elif kind in FINAL_EVENTS:
            p.final = e
            p.phase = kind
            if kind == "done":
                p.fraction, p.eta_s = 1.0, 0.0
            if kind == "error":
                p.error = e.get("message") or "Training failed."
    return p


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "unknown"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")
