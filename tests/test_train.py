import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, make_flickr, tiny_train_config
from core.train import TrainConfig, lr_at, main, read_progress, run


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(0.1, abs=0.01)


def test_events_follow_the_documented_schema(tiny_bundle):
    events = read_progress(tiny_bundle.parent.parent / "run")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    for kind in ("phase", "encode", "step", "sample", "epoch", "checkpoint"):
        assert kind in kinds
    step = next(e for e in events if e["event"] == "step")
    assert {"epoch", "epochs", "step", "total_steps", "loss", "lr", "images_per_s", "eta_s", "time"} <= set(step)
    epoch = next(e for e in events if e["event"] == "epoch")
    assert set(epoch["metrics"]) >= {"BLEU-4", "CIDEr"}
    done = events[-1]
    assert done["bundle"] == str(tiny_bundle)
    card = (tiny_bundle / "card.md").read_text()
    assert "python -m core.train" in card and "| epoch |" in card


def test_read_progress_skips_a_half_written_line(tmp_path):
    (tmp_path / "progress.jsonl").write_text('{"event": "start"}\n{"event": "st')
    assert read_progress(tmp_path) == [{"event": "start"}]


def _final_weights(run_dir):
    return {k: v for k, v in load_file(run_dir / "checkpoint.safetensors").items() if k.startswith("model/")}


def test_killed_run_resumes_to_the_same_result(tmp_path):
    """checkpoint -> SIGKILL -> --resume must end exactly where an uninterrupted run ends."""
    data = make_flickr(tmp_path / "data")
    cfg = tiny_train_config(data, tmp_path, epochs=12, batch_size=4, dropout=0.3, checkpoint_every=3,
                            scst_epochs=1, scst_batch_size=8, scst_lr=1e-3)
    run(cfg, tmp_path / "straight")

    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    cmd = [sys.executable, "-m", "core.train", "--config", str(tmp_path / "cfg.json"), "--run-dir", str(tmp_path / "killed")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        if any(e["event"] == "checkpoint" and e["step"] >= 6 for e in read_progress(tmp_path / "killed")):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    events = read_progress(tmp_path / "killed")
    assert not any(e["event"] == "done" for e in events), "finished before it could be killed"
    subprocess.run(cmd + ["--resume"], cwd=ROOT, check=True, capture_output=True, timeout=300)

    resumed = read_progress(tmp_path / "killed")
    assert any(e["event"] == "start" and e["resumed"] for e in resumed) and resumed[-1]["event"] == "done"
    a, b = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stop_file_checkpoints_and_exits_then_resume_finishes(tmp_path):
    data = make_flickr(tmp_path / "data")
    cfg = tiny_train_config(data, tmp_path, epochs=3, batch_size=4)
    seen = []

    def stop_after_a_few_steps(event):
        seen.append(event)
        if event["event"] == "step" and event["step"] >= 5:
            (tmp_path / "run" / "STOP").touch()

    assert run(cfg, tmp_path / "run", listeners=[stop_after_a_few_steps]) is None
    assert seen[-1] == {**seen[-1], "event": "stopped", "reason": "stop file"}
    assert seen[-2]["event"] == "checkpoint"
    (tmp_path / "run" / "STOP").unlink()
    bundle = run(cfg, tmp_path / "run", resume=True)
    assert bundle == tmp_path / "models" / "tiny" and (bundle / "model.safetensors").exists()
    # a second model of the same name never overwrites the first
    assert run(cfg, tmp_path / "run2") == tmp_path / "models" / "tiny-2"


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    data = make_flickr(tmp_path / "data", per_class=6)
    cfg = tiny_train_config(data, tmp_path, epochs=200, batch_size=2)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    proc = subprocess.Popen([sys.executable, "-m", "core.train", "--config", str(tmp_path / "cfg.json"),
                             "--run-dir", str(tmp_path / "run")], cwd=ROOT, stdout=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not any(e["event"] == "step" for e in read_progress(tmp_path / "run")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    events = read_progress(tmp_path / "run")
    assert [e["event"] for e in events[-2:]] == ["checkpoint", "stopped"] and events[-1]["reason"] == "SIGTERM"


def test_bad_dataset_is_an_error_event(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["--data", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "run")])
    assert code == 1
    err = read_progress(tmp_path / "run")[-1]
    assert err["event"] == "error" and "no 'train' split" in err["message"]


def test_dry_run_checks_the_dataset(tmp_path, capsys):
    assert main(["--dry-run", "--data", str(make_flickr(tmp_path / "d")), "--epochs", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["epochs"] == 2 and out["dataset"]["splits"] == {"train": 16, "val": 8}


def test_unknown_config_keys_are_refused():
    with pytest.raises(ValueError, match="unknown training options: colour"):
        TrainConfig.from_dict({"colour": "red"})


def test_fine_tuning_trains_the_backbone_without_the_cache(tmp_path):
    from core.bundle import load_bundle

    data = make_flickr(tmp_path / "data")
    bundle = run(tiny_train_config(data, tmp_path, epochs=1, fine_tune=True), tmp_path / "run")
    assert not (tmp_path / "cache").exists()  # no features cached: the encoder changes every step
    weights = load_file(bundle / "model.safetensors")
    assert any(k.startswith("encoder.") for k in weights)
    assert load_bundle(bundle).config.fine_tune
