"""core.base.process: a process is the one recorded only when its pid *and* its start time match. A live process
is alive; a dead pid, a pid now held by another process (another start time), an unknown start time or a zombie
are not, and nothing is ever signalled on them. Spawned processes are detached, log to a file and are reaped."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from core.base import process

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def wait_until(check, timeout: float = 20.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.fixture
def sleeper():
    """A live process, not started by core.base.process; killed at the end."""
    proc = subprocess.Popen(SLEEPER)
    yield proc
    proc.kill()
    proc.wait()


def test_a_live_process_is_alive_under_its_pid_and_start_time(sleeper):
    started = process.start_time(sleeper.pid)
    assert started == psutil.Process(sleeper.pid).create_time()
    assert abs(started - time.time()) < 120
    assert process.is_alive(sleeper.pid, started)
    assert process.is_alive(sleeper.pid, started + 0.5)  # the boot time psutil adds can move by up to a second


def test_a_pid_held_by_another_process_is_not_the_one_recorded(sleeper):
    """What a reused pid looks like: the pid runs, but the process recorded under it started at another time."""
    started = process.start_time(sleeper.pid)
    for recorded in (started - 3600, started - 1.5, started + 1.5):
        assert not process.is_alive(sleeper.pid, recorded)
        assert not process.terminate(sleeper.pid, recorded)
    time.sleep(0.3)
    assert sleeper.poll() is None  # never signalled


def test_a_process_whose_start_time_is_unknown_is_never_treated_as_ours(sleeper):
    for recorded in (None, "not a time"):
        assert not process.is_alive(sleeper.pid, recorded)
        assert not process.terminate(sleeper.pid, recorded)
    time.sleep(0.3)
    assert sleeper.poll() is None


def test_a_dead_pid_is_not_alive_and_has_no_start_time():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process.start_time(proc.pid)
    proc.wait()
    assert started is not None
    assert process.start_time(proc.pid) is None and not process.is_alive(proc.pid, started)
    assert not process.terminate(proc.pid, started)
    for pid in (None, 0, -1):
        assert process.start_time(pid) is None and not process.is_alive(pid, 1.0)


@pytest.mark.skipif(os.name == "nt", reason="zombies are POSIX")
def test_a_zombie_is_not_alive():
    """A child that ended but that its parent has not waited for keeps its pid and start time: it is not running."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process.start_time(proc.pid)
    assert wait_until(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE)
    try:
        assert process.start_time(proc.pid) is not None  # its pid and start time are still there...
        assert not process.is_alive(proc.pid, started)  # ...but it does not run
    finally:
        proc.wait()


def test_terminate_ends_the_recorded_process_and_its_children(tmp_path):
    parent = ("import subprocess, sys, time\n"
              f"child = subprocess.Popen({SLEEPER!r})\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(60)\n")
    proc = process.spawn([sys.executable, "-c", parent], tmp_path, dict(os.environ), tmp_path / "log.txt")
    assert wait_until(lambda: (tmp_path / "log.txt").read_text().strip())
    child = psutil.Process(int((tmp_path / "log.txt").read_text()))
    assert process.terminate(proc.pid, process.start_time(proc.pid))
    assert proc.wait(20) is not None
    gone, alive = psutil.wait_procs([child], timeout=20)
    assert alive == []


@pytest.mark.skipif(os.name == "nt", reason="POSIX sessions and zombies")
def test_spawn_detaches_logs_and_reaps(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("an earlier attempt\n")
    code = "import os, sys; print('out', os.getsid(0)); print('err', file=sys.stderr)"
    proc = process.spawn([sys.executable, "-c", code], tmp_path, dict(os.environ), log)
    started = process.start_time(proc.pid)
    assert wait_until(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE)  # ended, not yet reaped
    lines = log.read_text().splitlines()
    assert lines[0] == "an earlier attempt" and "err" in lines  # appended, stderr too
    assert f"out {proc.pid}" in lines  # a session of its own: a Ctrl+C or the server's restart does not reach it
    assert not process.is_alive(proc.pid, started)
    assert proc.returncode == 0 and proc.pid not in process._children  # reaped: no zombie left behind
