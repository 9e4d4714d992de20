"""Training under torchrun: 2 CPU processes with Gloo, as CI runs them (about 2 minutes on 2 cores).

The reference is one process with the same global batch: the tiny dataset's captions all have the same
number of tokens, so each rank's mean loss over half the batch averages to exactly the whole batch's mean,
and the cross-entropy losses agree to float rounding (LOSS_RTOL). SCST steps are not compared: each rank
samples its own captions.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, make_flickr, tiny_train_config
from core.runs import folder as runs
from core.base.config import TrainConfig
from core.base.paths import TEST_FAIL_AT_ENV
from core.runs.folder import read_progress
from core.train.trainer import run

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with Gloo is needed")

LOSS_RTOL = 1e-4  # 2 processes vs 1 in fp32: the same sums in another order (bf16 autocast rounds more coarsely)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data = make_flickr(tmp / "data")  # 16 images x 2 captions: 4 global batches of 8 per epoch
    cfg = tiny_train_config(data, tmp, epochs=3, batch_size=8, log_every=1, checkpoint_every=3, scst_epochs=1,
                            scst_batch_size=8, scst_lr=1e-3, device="cpu", precision="fp32")
    (tmp / "cfg.json").write_text(json.dumps(cfg.to_dict()), encoding="utf-8")
    return tmp, cfg


def _torchrun(tmp, run_dir, *extra, nproc=2, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "core.train", "--config", str(tmp / "cfg.json"), "--run-dir", str(run_dir), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_all(proc) -> None:
    """SIGKILL torchrun and its ranks at once (torchrun starts each rank in a session of its own)."""
    family = [psutil.Process(proc.pid)]
    family += family[0].children(recursive=True)
    for p in family:
        p.send_signal(signal.SIGKILL)
    proc.wait()


def _finish(proc, timeout=240) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_all(proc)
        raise
    return proc.returncode, err.decode(errors="replace")


def _wait_for(run_dir, predicate, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(predicate(e) for e in read_progress(run_dir)):
            return
        time.sleep(0.02)
    raise AssertionError(f"no such event in {run_dir} within {timeout} s")


def _xe_losses(events) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events if e["event"] == "step" and not e["scst"]}


def _attempt(events):
    """The events of the latest attempt (from its "start" on)."""
    return events[max(i for i, e in enumerate(events) if e["event"] == "start"):]


def _weights(run_dir):
    return {k: v for k, v in load_file(run_dir / "checkpoint.safetensors").items() if k.startswith("model/")}


@pytest.fixture(scope="module")
def two_processes(setup):
    tmp, _ = setup
    code, err = _finish(_torchrun(tmp, tmp / "two"))
    assert code == 0, err[-3000:]
    return tmp / "two"


@pytest.mark.slow
def test_two_processes_follow_the_one_process_loss_curve(setup, two_processes):
    tmp, cfg = setup
    run(cfg, tmp / "one")
    one, two = read_progress(tmp / "one"), read_progress(two_processes)
    assert [e["event"] for e in two if e["event"] in ("start", "done")] == ["start", "done"]
    assert two[0]["processes"] == 2
    a, b = _xe_losses(one), _xe_losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert all(b[k] == pytest.approx(a[k], rel=LOSS_RTOL) for k in a), (a, b)
    # validation: every image once, gathered from both ranks; SCST ran distributed to the end
    assert [e["val_images"] for e in two if e["event"] == "epoch"] == [8, 8, 8, 8]
    assert [e["step"] for e in two if e["event"] == "step" and e["scst"]] == [13, 14]
    # rank 0 alone writes: one event of each step, one model
    assert len([e for e in two if e["event"] == "step"]) == 14
    card = (Path(two[-1]["bundle"]) / "card.md").read_text(encoding="utf-8")
    assert "under torchrun, 2 processes" in card


@pytest.mark.slow
def test_killed_torchrun_resumes_with_every_step_done_once(setup, two_processes):
    tmp, _ = setup
    run_dir = tmp / "killed"
    proc = _torchrun(tmp, run_dir)
    _wait_for(run_dir, lambda e: e["event"] == "checkpoint" and e["step"] >= 3)  # mid-epoch 1
    _kill_all(proc)  # torchrun and both ranks, mid-run
    events = read_progress(run_dir)
    assert not any(e["event"] == "done" for e in events), "finished before it could be killed"
    saved = max(e["step"] for e in events if e["event"] == "checkpoint")

    code, err = _finish(_torchrun(tmp, run_dir, "--resume"))
    assert code == 0, err[-3000:]
    resumed = _attempt(read_progress(run_dir))
    assert resumed[0]["resumed"] and resumed[-1]["event"] == "done"
    steps = [e["step"] for e in resumed if e["event"] == "step"]
    assert steps == list(range(saved + 1, 15))  # on from the checkpoint, each step once
    a, b = _weights(two_processes), _weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # as if never killed


@pytest.mark.slow
def test_ranks_left_by_a_killed_torchrun_checkpoint_and_exit_then_resume(setup, two_processes):
    """SIGKILL torchrun alone (not its ranks): the orphaned ranks stop together as if asked, with one checkpoint, and
    release the run; --resume then finishes with the uninterrupted run's weights."""
    tmp, _ = setup
    run_dir = tmp / "orphaned"
    proc = _torchrun(tmp, run_dir)
    _wait_for(run_dir, lambda e: e["event"] == "checkpoint" and e["step"] >= 3)
    ranks = psutil.Process(proc.pid).children(recursive=True)
    assert len(ranks) == 2
    proc.send_signal(signal.SIGKILL)  # the launcher only
    proc.wait()
    gone, alive = psutil.wait_procs(ranks, timeout=120)
    for p in alive:
        p.kill()
    assert not alive, "the ranks trained on without their launcher"
    events = read_progress(run_dir)
    assert not any(e["event"] == "done" for e in events), "finished before the launcher was killed"
    assert [e["event"] for e in events[-2:]] == ["checkpoint", "stopped"], events[-3:]
    assert events[-1]["reason"] == "launcher gone"

    code, err = _finish(_torchrun(tmp, run_dir, "--resume"))
    assert code == 0, err[-3000:]
    resumed = _attempt(read_progress(run_dir))
    steps = [e["step"] for e in resumed if e["event"] == "step"]
    assert steps == list(range(events[-2]["step"] + 1, 15))
    a, b = _weights(two_processes), _weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_stop_file_stops_both_ranks_and_one_process_resumes(setup, two_processes):
    tmp, cfg = setup
    run_dir = tmp / "stopped"
    proc = _torchrun(tmp, run_dir)
    _wait_for(run_dir, lambda e: e["event"] == "step" and e["step"] >= 5)
    (run_dir / "STOP").touch()
    code, err = _finish(proc)
    assert code == 0, err[-3000:]  # both ranks exited cleanly
    events = read_progress(run_dir)
    assert [e["event"] for e in events[-2:]] == ["checkpoint", "stopped"] and events[-1]["reason"] == "stop file"
    assert not (run_dir / "STOP").exists()
    saved = events[-2]["step"]
    with pytest.raises(ValueError, match="batch size 8"):  # the saved position counts batches of 8
        run(TrainConfig.from_dict({**cfg.to_dict(), "batch_size": 4}), run_dir, resume=True)

    assert run(cfg, run_dir, resume=True) is not None  # the same run, resumed by one process
    resumed = _attempt(read_progress(run_dir))
    assert resumed[1]["event"] != "error"
    losses = _xe_losses(resumed)
    assert sorted(losses) == list(range(saved + 1, 13))
    reference = _xe_losses(read_progress(two_processes))
    assert all(losses[k] == pytest.approx(reference[k], rel=LOSS_RTOL) for k in losses)


@pytest.mark.slow
def test_a_failing_rank_ends_the_run_with_its_error(setup):
    tmp, _ = setup
    run_dir = tmp / "failing"
    code, _ = _finish(_torchrun(tmp, run_dir, env={TEST_FAIL_AT_ENV: "1:3"}))
    assert code != 0
    events = read_progress(run_dir)
    assert not any(e["event"] == "step" and e["step"] >= 3 for e in events)
    progress = runs.summarize(events)
    assert progress.phase == "error" and "rank 1" in progress.error and "failure injected" in progress.error
    assert runs.run_status(run_dir) == "error"


def test_shards_cover_every_item_once_and_fill_gives_every_rank_work():
    from core.nn.distributed import shard

    for n in range(0, 9):
        items = list(range(100, 100 + n))
        for world in (1, 2, 3, 4):
            parts = [shard(items, r, world) for r in range(world)]
            assert sorted(x for p in parts for x in p) == items
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
            filled = [shard(items, r, world, fill=True) for r in range(world)]
            assert all(filled) if items else not any(filled)
            assert all(f == p for f, p in zip(filled, parts) if p)  # only empty shares change


@pytest.mark.slow
def test_a_transformer_trains_under_torchrun_by_whole_images_and_follows_one_process(setup, tmp_path):
    """--decoder transformer --group-by-image true under torchrun (2 ranks, Gloo): each rank takes its share of the
    batch's photos; the loss curve is the one-process one (each photo has 2 captions of the same length)."""
    tmp, cfg = setup
    d = cfg.to_dict()
    d["model"].update(decoder="transformer", hidden_dim=32, num_layers=2, num_heads=4)
    d.update(group_by_image=True, scst_epochs=0, epochs=2, models_dir=str(tmp_path / "models"), model_name="tr")
    one_cfg = TrainConfig.from_dict(d)
    (tmp_path / "cfg.json").write_text(json.dumps(one_cfg.to_dict()), encoding="utf-8")
    code, err = _finish(_torchrun(tmp_path, tmp_path / "two"))
    assert code == 0, err[-3000:]
    run(one_cfg, tmp_path / "one")
    two, one = _xe_losses(read_progress(tmp_path / "two")), _xe_losses(read_progress(tmp_path / "one"))
    assert len(two) == len(one) == 8
    assert all(abs(two[k] - one[k]) <= 1e-3 * abs(one[k]) for k in one)
    assert (tmp_path / "models" / "tr" / "model.safetensors").exists()
