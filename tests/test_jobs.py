"""core/runs/jobs.py with a fake trainer: a tiny script speaking core.train.trainer's CLI, events and job lock."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from app_fixtures import fake_torchrun_command, fake_trainer_command
from core.runs import jobs
from core.base import process
from core.base.paths import REPO_ROOT
from core.runs import folder as runs


@pytest.fixture
def fake(tmp_path):
    return fake_trainer_command(tmp_path)


@pytest.fixture
def runs_root(tmp_path):
    return tmp_path / "runs"


def wait_until(cond, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def kill(job):
    os.killpg(job.pid, signal.SIGKILL)
    jobs.wait_for_exit(job, 10)


def test_start_writes_run_folder_and_job_file(runs_root, fake):
    job = jobs.start_job({"model_name": "my_model-1", "epochs": 3, "embed_dim": 16}, runs_root, command=fake)
    try:
        assert job.run_dir.parent == runs_root and job.name.endswith("my_model-1")
        config = json.loads((job.run_dir / runs.CONFIG).read_text(encoding="utf-8"))
        assert config["epochs"] == 3 and config["model"]["embed_dim"] == 16  # one ModelConfig inside
        assert Path(config["data"]).is_absolute() and Path(config["cache_dir"]).is_absolute()
        assert runs.Job.load(job.run_dir).pid == job.pid
        assert job.alive()
        assert wait_until(lambda: runs.run_status(job.run_dir) == "running")
        assert wait_until(lambda: "fake trainer up" in "\n".join(runs.tail_log(job.run_dir)))
    finally:
        kill(job)


def test_bad_settings_are_refused_before_anything_starts(runs_root, fake):
    with pytest.raises(jobs.JobError, match="unknown training options: colour"):
        jobs.start_job({"colour": "red"}, runs_root, command=fake)
    with pytest.raises(jobs.JobError, match="model name may hold only"):
        jobs.start_job({"model_name": "../evil"}, runs_root, command=fake)
    with pytest.raises(jobs.JobError, match="Unknown backbone"):
        jobs.start_job({"backbone": "vgg"}, runs_root, command=fake)
    assert not runs_root.exists() or not [p for p in runs_root.iterdir() if p.is_dir()]


def test_one_job_at_a_time_and_reattach(runs_root, fake):
    job = jobs.start_job({}, runs_root, command=fake)
    try:
        with pytest.raises(jobs.JobError, match="already going"):
            jobs.start_job({}, runs_root, command=fake)
        assert [p.name for p in runs_root.iterdir() if p.is_dir()] == [job.name]  # the refused start left nothing
        process._children.clear()  # as after a restart of the server: only the files remain
        again = jobs.current_job(runs_root)
        assert again is not None and again.pid == job.pid and again.run_dir == job.run_dir
    finally:
        kill(job)


def test_stop_then_resume_then_done(runs_root, fake):
    job = jobs.start_job({}, runs_root, command=fake)
    assert wait_until(lambda: runs.summarize(runs.read_progress(job.run_dir)).losses)
    jobs.stop_job(job)
    assert runs.run_status(job.run_dir) in ("stopping", "stopped")
    assert jobs.wait_for_exit(job, 20)
    assert runs.run_status(job.run_dir) == "stopped"
    assert jobs.current_job(runs_root) is None
    info = runs.run_info(job.run_dir)
    assert info.resumable and info.status == "stopped"

    again = jobs.resume_job(job.run_dir, command=fake)
    assert again.resumed and "--resume" in again.command
    assert jobs.wait_for_exit(again, 20)
    info = runs.run_info(job.run_dir)
    assert info.status == "done" and info.bundle.endswith("model") and info.metrics["CIDEr"] == 0.2
    assert not info.resumable
    with pytest.raises(jobs.JobError, match="finished"):
        jobs.resume_job(job.run_dir, command=fake)
    p = runs.summarize(runs.read_progress(job.run_dir))
    assert p.phase == "done" and p.fraction == 1.0 and p.epochs[-1]["BLEU-4"] == 0.1


def test_sigterm_fallback_when_stop_file_is_ignored(runs_root, tmp_path):
    job = jobs.start_job({}, runs_root, command=fake_trainer_command(tmp_path, "ignore_stop"))
    assert wait_until(lambda: runs.run_status(job.run_dir) == "running")
    jobs.stop_job(job)
    assert not jobs.enforce_stop(job, grace_s=60)  # too early
    time.sleep(0.3)
    assert jobs.enforce_stop(job, grace_s=0.1)
    assert jobs.wait_for_exit(job, 10)
    assert runs.run_status(job.run_dir) == "crashed"  # killed without a last word
    assert runs.run_info(job.run_dir).resumable


def test_error_and_crash_are_reported(runs_root, tmp_path):
    job = jobs.start_job({}, runs_root, command=fake_trainer_command(tmp_path, "error"))
    assert jobs.wait_for_exit(job, 20)
    assert runs.run_status(job.run_dir) == "error"
    assert runs.summarize(runs.read_progress(job.run_dir)).error == "The dataset folder is empty."
    job = jobs.start_job({}, runs_root, command=fake_trainer_command(tmp_path, "crash"))  # the lock was freed
    assert jobs.wait_for_exit(job, 20)
    assert runs.run_status(job.run_dir) == "crashed"
    assert [r.status for r in runs.list_runs(runs_root)] == ["crashed", "error"]  # newest first


def test_a_leftover_lock_file_never_blocks(runs_root, tmp_path):
    runs_root.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (runs_root / jobs.LOCK_NAME).write_text(json.dumps({"run_dir": str(runs_root / "old"), "pid": dead.pid}))
    job = jobs.start_job({}, runs_root, command=fake_trainer_command(tmp_path, "crash"))
    assert jobs.wait_for_exit(job, 20)


def test_a_lock_that_reads_stale_is_not_taken_from_a_live_job(runs_root, fake):
    # Regression (lock race): current_job read the lock file, judged its pid dead, deleted the lock that a
    # new trainer had just written, and a second trainer started beside the first. The lock is now the OS's,
    # held by the live trainer: whatever the lock file says, a second start is refused.
    job = jobs.start_job({}, runs_root, command=fake)
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        # what the racing reader saw: the lock of an earlier job, whose process is gone
        (runs_root / jobs.LOCK_NAME).write_text(json.dumps({"run_dir": str(runs_root / "earlier-run"),
                                                            "pid": dead.pid, "start_time": "1"}))
        assert jobs.current_job(runs_root) is not None
        with pytest.raises(jobs.JobError, match="already going"):
            jobs.start_job({}, runs_root, command=fake)
        assert len([p for p in runs_root.iterdir() if p.is_dir()]) == 1
    finally:
        kill(job)


def test_stop_never_signals_a_process_whose_identity_is_unproven(runs_root, tmp_path, fake):
    # Regression: with no start time in job.json (always on macOS before; or an edited file) and the pid reused,
    # Stop sent SIGTERM to whatever process had that pid now, and new runs were refused while it lived.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process.start_time(stranger.pid) is not None  # known on every OS now (psutil)
        run_dir = runs_root / "old-run"
        run_dir.mkdir(parents=True)
        (run_dir / runs.CONFIG).write_text("{}", encoding="utf-8")
        for recorded in (None, process.start_time(stranger.pid) - 3600):  # unknown, or another process's
            job = runs.Job(run_dir, stranger.pid, recorded, time.time() - 7200, stop_requested_at=time.time() - 7200)
            job.save()
            (runs_root / jobs.LOCK_NAME).write_text(json.dumps({"run_dir": str(run_dir), "pid": stranger.pid,
                                                                "start_time": recorded}))
            job = runs.Job.load(run_dir)
            assert not job.alive() and not jobs.enforce_stop(job, grace_s=1)
            assert stranger.poll() is None  # the stranger lives on
        job = jobs.start_job({}, runs_root, command=fake)  # and it does not hold up a new run
        kill(job)
    finally:
        stranger.kill()
        stranger.wait()


def test_process_identity_is_pid_and_start_time(tmp_path):
    me = os.getpid()
    assert process.is_alive(me, process.start_time(me))
    assert not process.is_alive(me, process.start_time(me) - 100)  # the pid of another, earlier process
    assert not process.is_alive(me, None)  # unproven
    assert not process.is_alive(0, 1.0) and not process.is_alive(None, None)
    job = runs.Job(tmp_path, me, process.start_time(me), time.time())
    job.save()
    assert runs.Job.load(tmp_path).start_time == job.start_time and runs.Job.load(tmp_path).alive()


def test_read_progress_tolerates_half_written_line(tmp_path):
    (tmp_path / "progress.jsonl").write_text('{"event": "start", "time": 1}\n{"event": "st')
    assert [e["event"] for e in runs.read_progress(tmp_path)] == ["start"]
    assert runs.read_progress(tmp_path / "missing") == []


def test_summarize_restarts_after_resume():
    events = [
        {"event": "start"}, {"event": "phase", "phase": "encoding"},
        {"event": "encode", "done": 5, "total": 10, "eta_s": 3, "images_per_s": 2.0},
        {"event": "stopped", "reason": "stop file"},
        {"event": "start", "resumed": True}, {"event": "phase", "phase": "training"},
        {"event": "step", "epoch": 1, "epochs": 2, "step": 4, "total_steps": 8, "loss": 2.5, "eta_s": 70},
    ]
    p = runs.summarize(events)
    assert (p.phase, p.fraction, p.final, p.losses) == ("training", 0.5, None, [{"step": 4, "loss": 2.5}])
    p = runs.summarize(events + [{"event": "phase", "phase": "validating"}])
    assert (p.phase, p.fraction) == ("validating", 0.5)  # validating keeps the training progress
    assert "epoch 1/2" in p.label and runs.format_eta(p.eta_s) == "1m 10s"
    assert runs.format_eta(None) == "unknown" and runs.format_eta(3725) == "1h 02m"


def test_job_outlives_the_server_that_started_it(runs_root, fake):
    # A stand-in for the Streamlit server starts the job and exits (stopped or restarted); a new one re-attaches.
    repo = REPO_ROOT
    code = (f"import sys; sys.path.insert(0, {str(repo)!r}); from core.runs import jobs; "
            f"jobs.start_job({{}}, {str(runs_root)!r}, command={fake!r})")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    job = jobs.current_job(runs_root)
    assert job is not None and job.alive()
    assert wait_until(lambda: runs.run_status(job.run_dir) == "running")
    jobs.stop_job(job)
    assert jobs.wait_for_exit(job, 20)  # not our child: a zombie counts as gone
    assert runs.run_status(job.run_dir) == "stopped" and jobs.current_job(runs_root) is None


def test_two_starts_at_once_give_one_job(runs_root, fake):
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(jobs.start_job, {}, runs_root, fake) for _ in range(2)]
    started = [f.result() for f in futures if f.exception() is None]
    refused = [f.exception() for f in futures if f.exception() is not None]
    try:
        assert len(started) == 1 and len(refused) == 1 and isinstance(refused[0], jobs.JobError)
        assert [p.name for p in runs_root.iterdir() if p.is_dir()] == [started[0].name]
    finally:
        for job in started:
            kill(job)


def test_two_starting_processes_give_one_job(runs_root, fake):
    repo = REPO_ROOT
    code = (f"import sys; sys.path.insert(0, {str(repo)!r}); from core.runs import jobs\n"
            f"try:\n    jobs.start_job({{}}, {str(runs_root)!r}, command={fake!r}); print('started')\n"
            f"except jobs.JobError as e:\n    print('refused', e)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = sorted(p.communicate(timeout=120)[0].split()[0] for p in procs)
    job = jobs.current_job(runs_root)
    try:
        assert outs == ["refused", "started"] and job is not None
    finally:
        if job is not None:
            kill(job)


# --- several processes (torchrun) ---------------------------------------------------------------------------


def test_the_torchrun_command_line():
    assert jobs.train_command(1) == [sys.executable, "-m", "core.train"]
    four = jobs.train_command(4)
    assert four == [sys.executable, "-m", "core.runs.launch", "--standalone", "--nproc-per-node", "4",
                    "-m", "core.train"]  # torchrun, its stores on loopback (core.runs.launch)
    assert [jobs.processes_of(c) for c in (four, jobs.train_command(1), ["torchrun", "--nproc-per-node=3"], None)] \
        == [4, 1, 3, 1]
    # a trainer given as a script (the tests' stand-in) runs under torchrun as that script
    assert jobs.train_command(2, ["python", "trainer.py", "--x"])[-4:] == ["--nproc-per-node", "2", "trainer.py", "--x"]
    with pytest.raises(jobs.JobError, match="at least 1"):
        jobs.start_job({}, command=["true"], processes=0)


def workers(job) -> list[psutil.Process]:
    try:
        return psutil.Process(job.pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_family(job, family):
    for p in [*family, *workers(job)]:
        try:
            p.kill()
        except psutil.Error:
            pass
    if job.alive():
        kill(job)


@pytest.fixture
def launcher(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "TORCHRUN", fake_torchrun_command(tmp_path))


def test_several_processes_stop_and_resume_with_as_many(runs_root, fake, launcher):
    job = jobs.start_job({}, runs_root, command=fake, processes=2)
    family = []
    try:
        assert job.command[1].endswith("fake_torchrun.py") and jobs.processes_of(job.command) == 2
        assert wait_until(lambda: len(workers(job)) == 2 and runs.run_status(job.run_dir) == "running")
        family = workers(job)
        assert sorted(p.environ()["RANK"] for p in family) == ["0", "1"]
        assert jobs.current_job(runs_root).pid == job.pid  # the launcher is the job; rank 0 holds the lock
        jobs.stop_job(job)
        assert jobs.wait_for_exit(job, 20) and not any(p.is_running() for p in family)
        assert runs.run_status(job.run_dir) == "stopped" and jobs.current_job(runs_root) is None
        assert "fake rank 1 ends" in "\n".join(runs.tail_log(job.run_dir))

        again = jobs.resume_job(job.run_dir, command=fake)
        assert again.resumed and jobs.processes_of(again.command) == 2  # as many as before
        assert jobs.wait_for_exit(again, 20)
        assert runs.run_status(job.run_dir) == "done"
    finally:
        kill_family(job, family)


def test_enforce_stop_reaches_the_workers_of_the_launcher(runs_root, tmp_path, launcher):
    job = jobs.start_job({}, runs_root, command=fake_trainer_command(tmp_path, "ignore_stop"), processes=2)
    family = []
    try:
        assert wait_until(lambda: len(workers(job)) == 2 and runs.run_status(job.run_dir) == "running")
        family = workers(job)
        jobs.stop_job(job)
        time.sleep(0.5)
        assert all(p.is_running() for p in family)  # they ignore the STOP file
        assert jobs.enforce_stop(job, grace_s=0.1)
        # the stand-in launcher dies of SIGTERM without passing it on: the workers end because they were signalled
        assert jobs.wait_for_exit(job, 10)
        gone, alive = psutil.wait_procs(family, timeout=10)
        assert not alive
    finally:
        kill_family(job, family)


@pytest.mark.slow
def test_real_torchrun_runs_the_job(runs_root, fake):
    """torch.distributed.run itself: rank 0 alone takes the job lock, a Stop ends both ranks and torchrun."""
    job = jobs.start_job({}, runs_root, command=fake, processes=2)
    family = []
    try:
        assert "core.runs.launch" in job.command
        assert wait_until(lambda: runs.run_status(job.run_dir) == "running", timeout=120)
        family = workers(job)
        # torchrun's stores (and anything its ranks listen on) are on loopback only: nothing on the network
        listening = [c.laddr for p in [psutil.Process(job.pid), *family] for c in p.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening and all(a.ip in ("127.0.0.1", "::1") for a in listening), listening
        jobs.stop_job(job)
        assert jobs.wait_for_exit(job, 60)
        assert runs.run_status(job.run_dir) == "stopped"
        assert "fake rank 1 ends" in "\n".join(runs.tail_log(job.run_dir, 50))
    finally:
        kill_family(job, family)


def test_resume_refuses_a_run_folder_a_trainer_from_a_terminal_works_on(runs_root, fake):
    """The run folder's own lock (core.runs.folder.hold_run_lock, taken by every trainer) is held by a process this app did
    not start: Resume says who has it instead of launching a trainer that would stop at once."""
    import os

    job = jobs.start_job({}, runs_root, command=fake)
    jobs.stop_job(job)
    assert jobs.wait_for_exit(job, 30)
    held = runs.hold_run_lock(job.run_dir)
    try:
        with pytest.raises(jobs.JobError, match=f"in use by another trainer \\(process {os.getpid()}, started"):
            jobs.resume_job(job.run_dir, runs_root, command=fake)
    finally:
        held.release()
