"""core/runs/folder.py: the run folder's readers, read without the trainer and without torch (the web process)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

BLOCK_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm") or name == "core.train.trainer":
            raise ImportError(f"{name} may not be imported to draw a run")
sys.meta_path.insert(0, NoTorch())
sys.path.insert(0, %r)
"""


def test_the_page_reads_and_draws_a_run_without_torch_or_the_trainer(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model_name": "été", "model": {"decoder": "attention"}},
                                                ensure_ascii=False), encoding="utf-8")
    events = [{"event": "start", "time": 1.0}, {"event": "phase", "phase": "training", "time": 2.0},
              {"event": "step", "epoch": 1, "epochs": 2, "step": 3, "total_steps": 6, "loss": 2.0, "time": 3.0},
              {"event": "epoch", "epoch": 1, "metrics": {"BLEU-4": 1.0, "CIDEr": 2.0}, "time": 4.0},
              {"event": "stopped", "reason": "stop file", "time": 5.0}]
    (run / "progress.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    code = BLOCK_TORCH % str(ROOT) + f"""
from pathlib import Path
from core.runs import jobs
from core.runs import folder as runs
from core.base import config
from core.base import paths
import ui.monitor  # the Train page's drawing of a run
info = runs.run_info({str(run)!r})
p = runs.summarize(runs.read_progress({str(run)!r}))
assert jobs.current_job(Path({str(tmp_path)!r})) is None
config.TrainConfig.from_dict({{"epochs": 2}}).resolved().check()  # the page's validation
print(info.status, info.resumable, info.config["model_name"] == "été", p.label, runs.list_runs({str(tmp_path)!r})[0].name)
print(sorted(m for m in sys.modules if m.startswith(("torch", "core.train.trainer"))))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["stopped True True epoch 1/2, step 3/6 run", "[]"]


def test_backbone_names_match_the_registry():
    from core.nn.backbones import BACKBONES
    from core.base.config import BACKBONE_NAMES

    assert tuple(BACKBONES) == BACKBONE_NAMES


def test_every_reason_the_stopper_gives_is_one_the_ranks_can_agree_on(tmp_path, monkeypatch):
    from core.runs import folder as runs

    monkeypatch.setattr(runs.signal, "signal", lambda *_: None)  # pytest's own SIGTERM handler stays
    monkeypatch.setattr(runs.os, "getppid", iter([1000, 1000, 1]).__next__)  # the launcher dies after one check
    gone = runs.Stopper(tmp_path, watch_parent=True)
    assert not gone() and gone()
    by_file = runs.Stopper(tmp_path)
    (tmp_path / runs.STOP).touch()
    assert by_file()
    by_signal = runs.Stopper(tmp_path)
    by_signal._on_sigterm()
    assert by_signal()
    assert [gone.reason, by_file.reason, by_signal.reason] == ["launcher gone", "stop file", "SIGTERM"]
    assert sorted(runs.STOP_REASONS) == sorted([gone.reason, by_file.reason, by_signal.reason])


def test_form_values_round_trip_and_damage(tmp_path):
    """The Train form's memory: plain values kept beside the run folders, not seen as a run; damage -> {}."""
    from core.runs.folder import FORM_MEMORY, list_runs, load_form_values, save_form_values

    assert load_form_values(tmp_path / "none-yet") == {}
    save_form_values(tmp_path, {"data": "/photos", "epochs": 3, "lr": 4e-4, "fine_tune": True, "odd": [1, 2]})
    assert load_form_values(tmp_path) == {"data": "/photos", "epochs": 3, "lr": 4e-4, "fine_tune": True}
    assert list_runs(tmp_path) == []
    (tmp_path / FORM_MEMORY).write_text("[1, 2]")
    assert load_form_values(tmp_path) == {}
    (tmp_path / FORM_MEMORY).write_text('{"data": "' + "x" * 200_000 + '"}')
    assert load_form_values(tmp_path) == {}


@pytest.mark.slow
def test_a_second_trainer_on_the_same_run_folder_exits_at_once_naming_the_first(tmp_path):
    """Two `python -m core.train --run-dir X`: the second says which process holds X and exits; the first trains on
    alone (before: both ran, their events interleaved and both published a model)."""
    import time

    from conftest import make_flickr, tiny_train_config
    from core.runs import folder as runs

    data = make_flickr(tmp_path / "data")
    (tmp_path / "cfg.json").write_text(json.dumps(tiny_train_config(data, tmp_path, epochs=500).to_dict()))
    cmd = [sys.executable, "-m", "core.train", "--config", str(tmp_path / "cfg.json"), "--run-dir", str(tmp_path / "run")]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "CAPTION_JOB_LOCK")}
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not any(e["event"] == "step" for e in runs.read_progress(tmp_path / "run")):
            assert first.poll() is None and time.time() < deadline, "the first trainer did not start training"
            time.sleep(0.2)
        started = time.time()
        second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 3, second.stderr
        assert f"in use by another trainer (process {first.pid}, started" in second.stderr
        assert "Traceback" not in second.stderr and time.time() - started < 60
        assert first.poll() is None  # the first goes on, alone
        events = runs.read_progress(tmp_path / "run")
        assert [e["event"] for e in events].count("start") == 1 and not any(e["event"] == "error" for e in events)
    finally:
        first.kill()
        first.wait()


def test_only_rank_0_takes_the_run_lock_under_torchrun(tmp_path, monkeypatch):
    """Under torchrun rank 0 holds the run folder for the job: the other ranks of the same job never try (they
    would find it held), while a second job's rank 0 is refused."""
    from conftest import make_flickr, tiny_train_config
    from core.runs import folder as runs
    from core.train import trainer as train

    taken = []
    real = runs.hold_run_lock
    monkeypatch.setattr(runs, "hold_run_lock", lambda d: taken.append(d) or real(d))
    monkeypatch.setattr(train, "_run", lambda *a, **k: None)  # the lock is the point here, not the training
    cfg = tiny_train_config(make_flickr(tmp_path / "data"), tmp_path)
    monkeypatch.setenv("RANK", "1")
    (tmp_path / "run").mkdir()
    held = real(tmp_path / "run")  # rank 0 of this job has it
    train.run(cfg, tmp_path / "run")  # rank 1 goes on
    assert taken == []
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(runs.RunInUse, match=f"process {os.getpid()}"):
        train.run(cfg, tmp_path / "run")  # another job's rank 0
    held.release()
    train.run(cfg, tmp_path / "run")
    assert len(taken) == 2



@pytest.mark.slow
def test_a_torchrun_job_on_a_run_folder_in_use_stops_at_once(tmp_path):
    """Under torchrun (through core.runs.launch, as the app starts it): rank 0 finds the folder held and exits saying
    so; torchrun then ends the other rank, and nothing is written into the run."""
    import time

    from conftest import make_flickr, tiny_train_config
    from core.runs import folder as runs

    data = make_flickr(tmp_path / "data")
    (tmp_path / "cfg.json").write_text(json.dumps(tiny_train_config(data, tmp_path, epochs=2).to_dict()))
    (tmp_path / "run").mkdir()
    held = runs.hold_run_lock(tmp_path / "run")  # another trainer: this test process
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "CAPTION_JOB_LOCK")}
    cmd = [sys.executable, "-m", "core.runs.launch", "--standalone", "--nproc-per-node", "2", "-m", "core.train",
           "--config", str(tmp_path / "cfg.json"), "--run-dir", str(tmp_path / "run"), "--device", "cpu"]
    started = time.time()
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        held.release()
    assert out.returncode != 0 and f"in use by another trainer (process {os.getpid()}" in out.stderr
    assert runs.read_progress(tmp_path / "run") == [] and time.time() - started < 200
