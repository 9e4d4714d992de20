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
from core.runs import folder as runs
from core.base.config import ConfigError, TrainConfig
from core.runs.folder import read_progress
from core.train.trainer import lr_at, main, run


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


@pytest.mark.slow
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
    assert not (tmp_path / "run" / "STOP").exists()  # carried out, so spent: the resume is not stopped by it
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
    with pytest.raises(ConfigError, match="unknown training options: colour"):
        TrainConfig.from_dict({"colour": "red"})


def test_fine_tuning_trains_the_backbone_without_the_cache(tmp_path):
    from core.nn.weights import load_bundle

    data = make_flickr(tmp_path / "data")
    bundle = run(tiny_train_config(data, tmp_path, epochs=1, fine_tune=True), tmp_path / "run")
    assert not (tmp_path / "cache").exists()  # no features cached: the encoder changes every step
    weights = load_file(bundle / "model.safetensors")
    assert any(k.startswith("encoder.") for k in weights)
    assert load_bundle(bundle).config.fine_tune
    # the backbone's BatchNorm statistics stay ImageNet's (the same on every rank under torchrun); its weights learn
    from core.nn.model import CaptionModel

    pretrained = CaptionModel(load_bundle(bundle).config, with_encoder=True, pretrained=True).state_dict()
    stats = [k for k in pretrained if k.startswith("encoder.") and k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(weights[k].float(), pretrained[k].float()) for k in stats)
    learned = [k for k in pretrained if k.startswith("encoder.") and k.endswith("weight")]
    assert any(not torch.equal(weights[k].float(), pretrained[k].float()) for k in learned)


def _cli(cfg: TrainConfig, tmp_path, run_dir, *extra, **popen):
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()), encoding="utf-8")
    cmd = [sys.executable, "-m", "core.train", "--config", str(tmp_path / "cfg.json"), "--run-dir", str(run_dir), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)


def test_a_stop_given_while_the_trainer_starts_is_kept(tmp_path):
    # Regression: the trainer deleted STOP when it started, so a Stop pressed in the first second (the wrong
    # dataset noticed) was lost: the run trained to the end and published a model.
    data = make_flickr(tmp_path / "data")
    cfg = tiny_train_config(data, tmp_path, epochs=2)
    (tmp_path / "run").mkdir()
    proc = _cli(cfg, tmp_path, tmp_path / "run")
    time.sleep(0.3)
    (tmp_path / "run" / "STOP").touch()
    assert proc.wait(timeout=300) in (0, 1), proc.stderr.read()
    kinds = [e["event"] for e in read_progress(tmp_path / "run")]
    assert kinds[-1] == "stopped" and "done" not in kinds and "step" not in kinds
    assert not (tmp_path / "models").exists()
    assert not (tmp_path / "run" / "STOP").exists()  # spent: a later resume trains


def test_a_stale_stop_of_an_earlier_attempt_does_not_end_a_resume(tmp_path):
    data = make_flickr(tmp_path / "data")
    cfg = tiny_train_config(data, tmp_path, epochs=1)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "STOP").touch()
    time.sleep(0.05)
    runs.Reporter(tmp_path / "run")("stopped", reason="stop file")  # an earlier attempt ended after that STOP
    assert run(cfg, tmp_path / "run") is not None


def test_home_and_relative_paths_are_resolved_once_for_the_whole_run(tmp_path, monkeypatch):
    # Regression: the form check expanded ~/flickr and passed; the trainer did not, and failed.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    make_flickr(tmp_path / "home" / "flickr")
    monkeypatch.chdir(tmp_path)
    cfg = tiny_train_config("~/flickr", tmp_path, epochs=1, cache_dir="rel-cache", models_dir="~/models")
    bundle = run(cfg, "rel-run")
    assert bundle == tmp_path / "home" / "models" / "tiny"
    saved = json.loads((tmp_path / "rel-run" / "config.json").read_text(encoding="utf-8"))
    assert saved["data"] == str(tmp_path / "home" / "flickr") and saved["cache_dir"] == str(tmp_path / "rel-cache")
    assert (tmp_path / "rel-cache").is_dir()
    assert TrainConfig(data="~/flickr").resolved().data == saved["data"]  # what the page and jobs check


ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": ""}


def test_config_files_are_read_as_utf8_under_an_ascii_locale(tmp_path):
    # Regression: config.json was written as UTF-8 and read in the locale's encoding (ASCII here, cp1252 on
    # Windows): a folder name with non-ASCII letters broke the trainer and the runs list.
    data = make_flickr(tmp_path / "data")
    cfg = tiny_train_config(data, tmp_path, models_dir=str(tmp_path / "modèles"), cache_dir=str(tmp_path / "caché"))
    env = {**os.environ, **ASCII_LOCALE}
    proc = _cli(cfg, tmp_path, tmp_path / "run", "--dry-run", env=env)
    out = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[1].decode(errors="replace")
    run_dir = tmp_path / "listed"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), ensure_ascii=False), encoding="utf-8")
    code = (f"import sys, locale; sys.path.insert(0, {str(ROOT)!r}); from core.runs import folder as runs; "
            f"assert locale.getpreferredencoding(False) != 'UTF-8'; "
            f"print(runs.run_info({str(run_dir)!r}).config['models_dir'].encode('unicode_escape').decode())")
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == str(tmp_path / "modèles").encode("unicode_escape").decode()


def test_a_killed_checkpoint_write_leaves_no_temporary_file(tmp_path):
    # Regression: a kill between a checkpoint's temporary write and its rename left a checkpoint-sized .tmp
    # file in the run folder forever. A start or resume removes such leftovers.
    data = make_flickr(tmp_path / "data")
    cfg = tiny_train_config(data, tmp_path, epochs=1)
    (tmp_path / "run" / "best").mkdir(parents=True)
    left = [tmp_path / "run" / ".checkpoint.safetensors.k1ll3d.tmp", tmp_path / "run" / "best" / ".model.safetensors.x.tmp"]
    for path in left:
        path.write_bytes(b"\0" * 4096)
    run(cfg, tmp_path / "run")
    assert not any(p.exists() for p in left)
    assert any("half-written" in e.get("message", "") for e in read_progress(tmp_path / "run"))


def test_checkpoints_come_by_time_as_well_as_by_steps(tmp_path):
    data = make_flickr(tmp_path / "data")
    cfg = tiny_train_config(data, tmp_path, epochs=2, batch_size=4, checkpoint_every=10_000,
                            checkpoint_minutes=0.0001)  # every step, by the clock
    run(cfg, tmp_path / "run")
    events = read_progress(tmp_path / "run")
    steps = {e["step"] for e in events if e["event"] == "step"}
    saved = [e["step"] for e in events if e["event"] == "checkpoint"]
    assert len(set(saved) - {8, 16}) > 2 and max(steps) == 16  # mid-epoch, not only at the epoch ends


def test_resuming_a_finished_run_publishes_nothing_more(tiny_bundle):
    # Found by tools/fault_drill.py: `--resume` on a finished run published the same model again (tiny-2, ...).
    run_dir = tiny_bundle.parent.parent / "run"
    before = sorted(p.name for p in tiny_bundle.parent.iterdir())
    assert main(["--config", str(run_dir / "config.json"), "--run-dir", str(run_dir), "--resume"]) == 0
    assert sorted(p.name for p in tiny_bundle.parent.iterdir()) == before


def test_fine_tuning_the_top_stages_from_a_trained_decoder_caches_the_rest_and_keeps_it_bit_equal(tmp_path):
    """--fine-tune --fine-tune-blocks 1 --init-from M: the last stage and head of the backbone learn (at a tenth of
    the rate), the stages below stay bit-equal to ImageNet's (their output is cached once), BatchNorm statistics too."""
    from core.nn.weights import load_bundle
    from core.nn.captioner import Captioner
    from core.nn.model import CaptionModel
    from conftest import make_image

    data = make_flickr(tmp_path / "data")
    start = run(tiny_train_config(data, tmp_path, decoder="attention", epochs=4, model_name="start"), tmp_path / "r1")
    cfg = tiny_train_config(data, tmp_path, decoder="attention", epochs=2, init_from=str(start), fine_tune=True,
                            fine_tune_blocks=1, lr=1e-3, model_name="tuned")
    bundle = run(cfg, tmp_path / "r2")
    config = load_bundle(bundle).config
    assert config.fine_tune and config.fine_tune_blocks == 1 and config.decoder == "attention"
    assert any("below-top-1" in (p / "key.json").read_text() for p in (tmp_path / "cache").iterdir())
    weights = load_file(bundle / "model.safetensors")
    pretrained = CaptionModel(config, with_encoder=True, pretrained=True).state_dict()
    encoder = [k for k in pretrained if k.startswith("encoder.")]
    top = [k for k in encoder if k.startswith(("encoder.cnn.model.blocks.6.", "encoder.cnn.model.conv_head",
                                                   "encoder.cnn.model.bn2"))]
    frozen = [k for k in encoder if k not in top and not k.startswith("encoder.cnn.model.classifier")]
    assert top and frozen
    assert all(torch.equal(weights[k], pretrained[k]) for k in frozen)  # fp32 bundle: bit-equal
    stats = [k for k in encoder if k.endswith(("running_mean", "running_var"))]
    assert all(torch.equal(weights[k], pretrained[k]) for k in stats)
    changed = [k for k in top if k.endswith("weight") and not torch.equal(weights[k], pretrained[k])]
    assert len(changed) >= 3  # the top stage's convolutions and the head got gradients and learned
    cap = Captioner(bundle, device="cpu")
    r = cap.caption([("x", make_image(tmp_path / "x.png", "blue", "square", seed=99))])[0]
    assert r.error is None and r.caption
