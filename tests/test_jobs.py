"""core/jobs.py with a fake trainer: a tiny script speaking core.train's CLI and progress events."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app_fixtures import fake_trainer_command
from core import jobs


@pytest.fixture
def fake(tmp_path):
    return fake_trainer_command(tmp_path)


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


def wait_until(cond, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_start_writes_run_folder_and_job_file(runs, fake):
    job = jobs.start_job({"model_name": "my model/..", "fake": "loop"}, runs, command=fake)
    try:
        assert job.run_dir.parent == runs and "my-model" in job.name  # the name never becomes a path
        assert json.loads((job.run_dir / "config.json").read_text())["fake"] == "loop"
        assert jobs.Job.load(job.run_dir).pid == job.pid
        assert job.alive()
        assert wait_until(lambda: jobs.run_status(job.run_dir) == "running")
        assert wait_until(lambda: "fake trainer up" in "\n".join(jobs.tail_log(job.run_dir)))
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        jobs.wait_for_exit(job, 10)


def test_one_job_at_a_time_and_reattach(runs, fake):
    job = jobs.start_job({"fake": "loop"}, runs, command=fake)
    try:
        with pytest.raises(jobs.JobError, match="already going"):
            jobs.start_job({"fake": "loop"}, runs, command=fake)
        assert len(list(runs.iterdir())) == 2  # the refused start left no run folder behind (lock + run)
        jobs._children.clear()  # as after a restart of the server: only the files remain
        again = jobs.current_job(runs)
        assert again is not None and again.pid == job.pid and again.run_dir == job.run_dir
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        jobs.wait_for_exit(job, 10)


def test_stop_then_resume_then_done(runs, fake):
    job = jobs.start_job({"fake": "loop"}, runs, command=fake)
    assert wait_until(lambda: jobs.summarize(jobs.read_events(job.run_dir)).losses)
    jobs.stop_job(job)
    assert jobs.run_status(job.run_dir) in ("stopping", "stopped")
    assert jobs.wait_for_exit(job, 20)
    assert jobs.run_status(job.run_dir) == "stopped"
    assert jobs.current_job(runs) is None and not (runs / jobs.LOCK_NAME).exists()  # the stale lock is cleared
    info = jobs.run_info(job.run_dir)
    assert info.resumable and info.status == "stopped"

    again = jobs.resume_job(job.run_dir, command=fake)
    assert again.resumed and "--resume" in again.command
    assert not (job.run_dir / jobs.STOP_NAME).exists()
    assert jobs.wait_for_exit(again, 20)
    info = jobs.run_info(job.run_dir)
    assert info.status == "done" and info.bundle.endswith("model") and info.metrics["CIDEr"] == 0.2
    assert not info.resumable
    with pytest.raises(jobs.JobError, match="finished"):
        jobs.resume_job(job.run_dir, command=fake)
    p = jobs.summarize(jobs.read_events(job.run_dir))
    assert p.phase == "done" and p.fraction == 1.0 and p.epochs[-1]["BLEU-4"] == 0.1


def test_sigterm_fallback_when_stop_file_is_ignored(runs, fake):
    job = jobs.start_job({"fake": "ignore_stop"}, runs, command=fake)
    assert wait_until(lambda: jobs.run_status(job.run_dir) == "running")
    jobs.stop_job(job)
    assert not jobs.enforce_stop(job, grace_s=60)  # too early
    time.sleep(0.3)
    assert jobs.enforce_stop(job, grace_s=0.1)
    assert jobs.wait_for_exit(job, 10)
    assert jobs.run_status(job.run_dir) == "crashed"  # killed without a last word
    assert jobs.run_info(job.run_dir).resumable


def test_error_and_crash_are_reported(runs, fake):
    job = jobs.start_job({"fake": "error"}, runs, command=fake)
    assert jobs.wait_for_exit(job, 20)
    assert jobs.run_status(job.run_dir) == "error"
    assert jobs.summarize(jobs.read_events(job.run_dir)).error == "The dataset folder is empty."
    job = jobs.start_job({"fake": "crash"}, runs, command=fake)  # the lock of the finished job was stale
    assert jobs.wait_for_exit(job, 20)
    assert jobs.run_status(job.run_dir) == "crashed"
    assert [r.status for r in jobs.list_runs(runs)] == ["crashed", "error"]  # newest first


def test_stale_lock_from_dead_process_is_cleared(runs, fake):
    runs.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (runs / jobs.LOCK_NAME).write_text(json.dumps({"run_dir": str(runs / "old"), "pid": dead.pid, "start_time": "1"}))
    job = jobs.start_job({"fake": "crash"}, runs, command=fake)
    assert jobs.wait_for_exit(job, 20)


def test_recycled_pid_is_not_the_job(tmp_path):
    # Regression: a pid reused by an unrelated process after a reboot or a long time must not count as the job.
    me = os.getpid()
    assert jobs.pid_alive(me, jobs.process_start_time(me))
    if jobs.process_start_time(me) is not None:  # Linux: the start time tells them apart
        assert not jobs.pid_alive(me, "12345678901")
    job = jobs.Job(tmp_path, me, "12345678901" if jobs.process_start_time(me) else None, time.time())
    job.save()
    assert jobs.Job.load(tmp_path).start_time == job.start_time
    assert not jobs.pid_alive(0) and not jobs.pid_alive(None)


def test_read_events_tolerates_half_written_line(tmp_path):
    (tmp_path / "progress.jsonl").write_text('{"event": "start", "time": 1}\n{"event": "st')
    assert [e["event"] for e in jobs.read_events(tmp_path)] == ["start"]
    assert jobs.read_events(tmp_path / "missing") == []


def test_summarize_restarts_after_resume():
    events = [
        {"event": "start"}, {"event": "phase", "phase": "encoding"},
        {"event": "encode", "done": 5, "total": 10, "eta_s": 3, "images_per_s": 2.0},
        {"event": "stopped", "reason": "stop file"},
        {"event": "start", "resumed": True}, {"event": "phase", "phase": "training"},
        {"event": "step", "epoch": 1, "epochs": 2, "step": 4, "total_steps": 8, "loss": 2.5, "eta_s": 70},
    ]
    p = jobs.summarize(events)
    assert (p.phase, p.fraction, p.final, p.losses) == ("training", 0.5, None, [{"step": 4, "loss": 2.5}])
    p = jobs.summarize(events + [{"event": "phase", "phase": "validating"}])
    assert (p.phase, p.fraction) == ("validating", 0.5)  # validating keeps the training progress
    assert "epoch 1/2" in p.label and jobs.format_eta(p.eta_s) == "1m 10s"
    assert jobs.format_eta(None) == "unknown" and jobs.format_eta(3725) == "1h 02m"


def test_env_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPTION_RUNS_DIR", str(tmp_path / "r"))
    monkeypatch.setenv("CAPTION_MODELS_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("CAPTION_CACHE_DIR", str(tmp_path / "c"))
    assert jobs.runs_dir() == tmp_path / "r" and jobs.models_dir() == tmp_path / "m"
    assert jobs.cache_dir() == tmp_path / "c"


def test_job_outlives_the_server_that_started_it(runs, fake):
    # A stand-in for the Streamlit server starts the job and exits (stopped or restarted); a new one re-attaches.
    repo = Path(jobs.__file__).resolve().parent.parent
    code = (f"import sys; sys.path.insert(0, {str(repo)!r}); from core import jobs; "
            f"jobs.start_job({{'fake': 'loop'}}, {str(runs)!r}, command={fake!r})")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    job = jobs.current_job(runs)
    assert job is not None and job.alive()
    assert wait_until(lambda: jobs.run_status(job.run_dir) == "running")
    jobs.stop_job(job)
    assert jobs.wait_for_exit(job, 20)  # not our child: liveness comes from /proc (a zombie counts as gone)
    assert jobs.run_status(job.run_dir) == "stopped" and jobs.current_job(runs) is None


def test_two_starts_at_once_give_one_job(runs, fake):
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(jobs.start_job, {"fake": "loop"}, runs, fake) for _ in range(2)]
    started = [f.result() for f in futures if f.exception() is None]
    refused = [f.exception() for f in futures if f.exception() is not None]
    try:
        assert len(started) == 1 and len(refused) == 1 and isinstance(refused[0], jobs.JobError)
        assert [p.name for p in runs.iterdir() if p.is_dir()] == [started[0].name]
    finally:
        for job in started:
            os.killpg(job.pid, signal.SIGKILL)
            jobs.wait_for_exit(job, 10)
