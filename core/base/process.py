"""Process identity: start a detached process, and tell whether a recorded one still runs, on every OS.

A pid alone is not an identity: after the process ends its pid is handed to the next program. A process is
the one recorded only when its pid *and* its start time match, read through psutil on Linux, macOS and
Windows alike. Nothing is ever signalled on a pid whose identity is not proven.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil

# Start times are floats in seconds since the epoch. On Linux psutil adds the boot time to a tick count,
# and the boot time can move by up to a second when the clock is adjusted; a pid cannot be reused within
# a second of its first owner's start, so that tolerance never mistakes one process for another.
SAME_START_S = 1.0

_children: dict[int, subprocess.Popen] = {}  # started here: polled so they never linger as zombies


def start_time(pid: int | None) -> float | None:
    """When process `pid` started (seconds since the epoch), or None when there is no such process."""
    if not pid or pid <= 0:
        return None
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        _children.pop(pid, None)


def _process(pid: int | None, started: float | None) -> psutil.Process | None:
    """The live process with this pid and start time; None when it ended, was replaced, or is unproven."""
    if not pid or pid <= 0 or started is None:
        return None  # an unknown start time proves nothing: never treat (or signal) such a pid as ours
    _reap(pid)
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - float(started)) > SAME_START_S or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.Error, OSError, TypeError, ValueError):
        return None


def is_alive(pid: int | None, started: float | None) -> bool:
    """True when the process recorded as (pid, start time) still runs."""
    return _process(pid, started) is not None


def terminate(pid: int | None, started: float | None) -> bool:
    """SIGTERM (Windows: TerminateProcess) the recorded process and its children. False when unproven or gone."""
    proc = _process(pid, started)
    if proc is None:
        return False
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        family = [proc]
    for p in family:
        try:
            p.terminate()
        except psutil.Error:
            pass
    return True


def spawn(cmd: list[str], cwd: Path, env: dict, log_path: Path) -> subprocess.Popen:
    """Start `cmd` detached from this process (its own session; a new process group on Windows), output to a log.

    A Ctrl+C or a restart of the web server then does not reach it.
    """
    detach = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt"
              else {"start_new_session": True})
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, **detach)
    _children[proc.pid] = proc
    return proc
