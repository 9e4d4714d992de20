"""Background training jobs: the one-job lock, and start / resume / stop / attach. No Streamlit, no torch.

A job is `python -m core.train` in its own session (it outlives the web server) working on a run folder
(core.runs.folder owns the folder's files and events; core.base.process owns process identity). One job at a time: the
trainer holds an OS-level lock on RUNS_DIR/train.lock for its whole life, so the lock is free exactly when
no job runs, however the last one ended (SIGKILL and power cuts included); nothing judges staleness from a
file's contents. Starters take RUNS_DIR/.start.lock while they launch a trainer and wait for it to take the
job lock, so two starts at once give one job.

Several processes (one per GPU) run under torchrun on this machine (through core.runs.launch, which keeps its stores
on loopback): the job's process is then torchrun, its workers are its children (stopping reaches them:
core.base.process), and rank 0 alone holds the job lock.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from core.base import process
from core.base.config import ConfigError, TrainConfig, slug
from core.base.files import atomic_write_json, atomic_write_text
from core.base.paths import JOB_LOCK_ENV, REPO_ROOT, runs_dir
from core.runs.folder import CONFIG, LIVE, LOG, RUN_LOCK, STOP, Job, run_holder, run_status

TRAIN_COMMAND = (sys.executable, "-m", "core.train")
# torchrun for one machine, a free port of its own, listening on loopback only (core.runs.launch: torchrun's own
# --standalone listens on every address of the machine)
TORCHRUN = (sys.executable, "-m", "core.runs.launch", "--standalone")
NPROC_FLAG = "--nproc-per-node"
LOCK_NAME = "train.lock"  # held by the running trainer
START_LOCK_NAME = ".start.lock"  # held by a starter from its check to the trainer's taking LOCK_NAME
CURRENT_NAME = "current.json"  # which run folder the lock's holder works on
HANDOVER_S = 120.0  # how long a starter waits for its trainer to take the lock

_held_for_life: list[FileLock] = []  # the trainer's own lock: released by the OS when the process ends


class JobError(RuntimeError):
    """A job cannot be started or resumed; the message is in plain words."""


# --- the lock -------------------------------------------------------------------------------------------


def lock_held(path: Path) -> bool:
    """True when some process holds the OS lock on `path` (tried without waiting, released at once)."""
    if not Path(path).exists():
        return False
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def hold_job_lock(timeout: float = 60.0) -> None:
    """Called by the trainer first thing: take the lock its starter named in the environment, for life.

    Without the variable (a run from a terminal) there is nothing to take.
    """
    path = os.environ.pop(JOB_LOCK_ENV, None)
    if not path or os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 holds it for the whole job
        return
    lock = FileLock(path)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise JobError("Another training run holds the training lock; this one does not start.") from None
    _held_for_life.append(lock)


def current_job(root: Path | str | None = None) -> Job | None:
    """The live job (re-attach after a reload or a server restart), or None when the lock is free."""
    root = Path(root) if root is not None else runs_dir()
    try:
        run_dir = json.loads((root / CURRENT_NAME).read_text(encoding="utf-8"))["run_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    job = Job.load(run_dir)
    if job is None:
        return None
    # The lock goes when the trainer's interpreter shuts down, a moment before the process ends: until then
    # (its identity proven) it is still the live job, as core.runs.folder.run_status sees it.
    return job if lock_held(root / LOCK_NAME) or job.alive() else None


# --- start, stop, resume --------------------------------------------------------------------------------


def _valid_config(config: dict) -> TrainConfig:
    try:
        return TrainConfig.from_dict(config).resolved().check()
    except ConfigError as e:
        raise JobError(f"These settings cannot start a run: {e}") from None


def new_run_dir(root: Path, model_name: str = "") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{slug(model_name)[:40]}"
    for i in range(1000):
        path = root / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise JobError("Could not create a run folder.")


class _Starting:
    """The starter lock, with the check that no job runs: `with _Starting(root):` then launch."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.lock = root, FileLock(str(root / START_LOCK_NAME))

    def __enter__(self):
        try:
            self.lock.acquire(timeout=HANDOVER_S + 10)
        except Timeout:
            raise JobError("Another run is being started; try again in a moment.") from None
        if lock_held(self.root / LOCK_NAME):
            self.lock.release()
            live = current_job(self.root)
            raise JobError(f"A training run is already going ({live.name if live else 'started elsewhere'}). "
                           "Stop it first.")
        return self

    def __exit__(self, *exc):
        self.lock.release()


def train_command(processes: int = 1, command=None) -> list[str]:
    """`python -m core.train` (or `command`); with `processes` > 1 the same under torchrun, one process per GPU."""
    command = list(command or TRAIN_COMMAND)
    if processes <= 1:
        return command
    return [*TORCHRUN, NPROC_FLAG, str(processes), *command[1:]]  # torchrun takes the interpreter's place


def processes_of(command) -> int:
    """How many processes a recorded command line starts (1 unless it is a torchrun one)."""
    command = [str(c) for c in command or []]
    for i, arg in enumerate(command):
        value = command[i + 1] if arg == NPROC_FLAG and i + 1 < len(command) else arg.partition(f"{NPROC_FLAG}=")[2]
        if value.isdigit():
            return int(value)
    return 1


def _launch(run_dir: Path, root: Path, command, resume: bool, processes: int) -> Job:
    cmd = [*train_command(processes, command), "--config", str(run_dir / CONFIG), "--run-dir", str(run_dir)]
    if resume:
        cmd.append("--resume")
    (run_dir / STOP).unlink(missing_ok=True)  # a stop of an earlier attempt is spent
    env = {**os.environ, "PYTHONUNBUFFERED": "1", JOB_LOCK_ENV: str(root / LOCK_NAME)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    atomic_write_json(root / CURRENT_NAME, {"run_dir": str(run_dir)})
    proc = process.spawn(cmd, REPO_ROOT, env, run_dir / LOG)
    job = Job(run_dir, proc.pid, process.start_time(proc.pid), time.time(), cmd, resume)
    job.save()
    deadline = time.time() + HANDOVER_S
    while proc.poll() is None and not lock_held(root / LOCK_NAME) and time.time() < deadline:
        time.sleep(0.05)
    return job


def _valid_processes(processes) -> int:
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise JobError(f"The number of processes must be a whole number of at least 1, not {processes!r}.")
    return processes


def start_job(config: dict, root: Path | str | None = None, command=None, processes: int = 1) -> Job:
    """Validate the settings, write config.json (folders absolute) into a new run folder, start the trainer.

    `command` replaces `python -m core.train` (tests pass a fake trainer); `--config`, `--run-dir` and
    `--resume` are appended to it. `processes` > 1: that many under torchrun (one per GPU: train_command).
    """
    cfg, processes = _valid_config(config), _valid_processes(processes)
    root = Path(root) if root is not None else runs_dir()
    with _Starting(root):
        run_dir = new_run_dir(root, cfg.model_name)
        try:
            atomic_write_json(run_dir / CONFIG, cfg.to_dict())
            return _launch(run_dir, root, command, resume=False, processes=processes)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise


def resume_job(run_dir: Path | str, root: Path | str | None = None, command=None, processes: int | None = None) -> Job:
    """Continue a run from its checkpoint; `processes` None: as many processes as its last start had."""
    run_dir = Path(run_dir)
    root = Path(root) if root is not None else run_dir.parent
    if not (run_dir / CONFIG).is_file():
        raise JobError(f"{run_dir.name} has no config.json; it cannot be resumed.")
    try:
        _valid_config(json.loads((run_dir / CONFIG).read_text(encoding="utf-8")))
    except ValueError as e:
        raise JobError(f"{run_dir.name}/config.json cannot be read: {e}") from None
    with _Starting(root):
        status = run_status(run_dir)
        if status in LIVE:
            raise JobError(f"{run_dir.name} is still running.")
        if status == "done":
            raise JobError(f"{run_dir.name} has finished; start a new run instead.")
        if lock_held(run_dir / RUN_LOCK):  # a trainer started elsewhere (a terminal) works on it
            raise JobError(f"{run_dir.name} is in use by another trainer ({run_holder(run_dir)}); stop that one first.")
        if processes is None:
            last = Job.load(run_dir)
            processes = processes_of(last.command) if last else 1
        return _launch(run_dir, root, command, resume=True, processes=_valid_processes(processes))


def stop_job(job: Job) -> None:
    """Ask the trainer to checkpoint and exit (the STOP file); `enforce_stop` sends SIGTERM if it does not."""
    atomic_write_text(job.run_dir / STOP, "stop requested\n")
    job.stop_requested_at = time.time()
    job.save()


def enforce_stop(job: Job, grace_s: float = 60.0) -> bool:
    """SIGTERM the job and its children when a requested stop has not happened within `grace_s`. True if sent.

    Only a process whose pid *and* start time match job.json is signalled: never a stranger that got its pid.
    """
    if job.stop_requested_at is None or time.time() - job.stop_requested_at < grace_s:
        return False
    return process.terminate(job.pid, job.start_time)


def wait_for_exit(job: Job, timeout: float) -> bool:
    deadline = time.time() + timeout
    while job.alive():
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True
