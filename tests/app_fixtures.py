"""Fixtures for the app tests, built on the spot: image bytes, a tiny model bundle, stand-ins for the trainer and
torchrun. Datasets, images and the one colour table (COLOURS) are in conftest.py."""
from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path

from PIL import Image

from conftest import COLOURS


def jpeg_bytes(color=(200, 30, 30), size=(48, 40), fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def make_tiny_bundle(folder: Path, decoder: str = "attention", backbone: str = "efficientnet_lite0") -> Path:
    """A randomly initialised model bundle (tiny decoder, real frozen backbone), saved with core.nn.weights."""
    import torch

    from core.nn.weights import save_bundle
    from core.base.config import ModelConfig
    from core.nn.model import CaptionModel
    from core.data.vocabulary import Vocabulary

    torch.manual_seed(0)
    vocab = Vocabulary.build([f"a {w} square" for w in COLOURS], min_count=1)
    cfg = ModelConfig(vocab_size=len(vocab), backbone=backbone, decoder=decoder, embed_dim=16, hidden_dim=16,
                      attention_dim=16, max_len=8)
    model = CaptionModel(cfg, with_encoder=False, pretrained=False)
    return save_bundle(Path(folder), model, vocab, metrics={"val_greedy": {"BLEU-4": 12.3, "CIDEr": 45.6, "epoch": 1}},
                       card="A random test model.")


# A stand-in for `python -m core.train`: same CLI, same progress events (names from core.runs.folder), the job lock,
# STOP file and SIGTERM handling. Mode (--fake-mode): "loop" (steps until stopped; 3 steps when resumed, then
# done), "ignore_stop", "error", "crash", "linger" (done with models/tiny-attention at once, then 8 s to exit).
# Under torchrun (RANK set) rank 0 does all that; the other ranks report nothing and end with rank 0's last word,
# the STOP file or SIGTERM (or never, in "ignore_stop": only a signal that reaches them ends them).
FAKE_TRAINER = textwrap.dedent(
    """
    import argparse, json, os, signal, sys, time
    from pathlib import Path

    from core.runs import folder as runs
    from core.runs.jobs import hold_job_lock

    hold_job_lock()
    ap = argparse.ArgumentParser()
    ap.add_argument("--config"); ap.add_argument("--run-dir"); ap.add_argument("--resume", action="store_true")
    ap.add_argument("--fake-mode", default="loop")
    a = ap.parse_args()
    run = Path(a.run_dir)
    cfg = json.loads(Path(a.config).read_text(encoding="utf-8"))
    mode = a.fake_mode
    term = []
    signal.signal(signal.SIGTERM, lambda *_: term.append(1))
    emit = runs.Reporter(run)
    stop = run / runs.STOP

    if os.environ.get("RANK", "0") != "0":
        if mode == "ignore_stop":
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        import psutil

        began = psutil.Process(os.getppid()).create_time()  # the launcher's start: this attempt's events come after
        while not term and not (stop.exists() and mode != "ignore_stop") and not any(
                e.get("event") in runs.FINAL_EVENTS and e.get("time", 0) >= began for e in runs.read_progress(run)):
            time.sleep(0.05)
        print(f"fake rank {os.environ['RANK']} ends", flush=True)
        sys.exit(0)
    emit(runs.START, config=cfg, pid=0, resumed=a.resume)
    print("fake trainer up", flush=True)
    if mode == "crash":
        sys.exit(3)
    if mode == "error":
        emit(runs.ERROR, message="The dataset folder is empty.", traceback="")
        sys.exit(1)
    if mode == "linger":  # done at once, then slow to exit (a real trainer's interpreter takes a moment too)
        emit(runs.DONE, bundle=str(Path(os.environ["CAPTION_MODELS_DIR"]) / "tiny-attention"), metrics={})
        time.sleep(8)
        sys.exit(0)
    if mode == "ignore_stop":
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    emit(runs.PHASE, phase="training")
    steps = 3 if a.resume else 1000
    for step in range(1, steps + 1):
        if stop.exists() and mode != "ignore_stop" or term:
            emit(runs.SAVED, path=str(run / runs.CHECKPOINT), epoch=1, step=step)
            emit(runs.STOPPED, reason="SIGTERM" if term else "stop file")
            stop.unlink(missing_ok=True)
            sys.exit(0)
        emit(runs.STEP, epoch=1, epochs=1, step=step, total_steps=steps, loss=5.0 / step, lr=1e-3,
             images_per_s=10.0, eta_s=steps - step)
        time.sleep(0.05)
    emit(runs.EPOCH, epoch=1, train_loss=1.0, metrics={"BLEU-4": 0.1, "CIDEr": 0.2}, best=True)
    emit(runs.DONE, bundle=str(run / "model"), metrics={"BLEU-4": 0.1, "CIDEr": 0.2})
    """
)


def fake_trainer_command(folder: Path, mode: str = "loop") -> list[str]:
    script = Path(folder) / "fake_trainer.py"
    script.write_text(FAKE_TRAINER, encoding="utf-8")
    return [sys.executable, str(script), "--fake-mode", mode]


# A stand-in for `python -m torch.distributed.run --standalone --nproc-per-node N ...`: N children with RANK,
# LOCAL_RANK and WORLD_SIZE set, each in a session of its own (as torchrun starts them). SIGTERM ends it without
# passing the signal on, so a stop reaches the workers only if the stopper signals them itself.
FAKE_TORCHRUN = textwrap.dedent(
    """
    import os, signal, subprocess, sys

    args = sys.argv[1:]
    assert args[:2] == ["--standalone", "--nproc-per-node"], args
    n, command = int(args[2]), args[3:]
    workers = [subprocess.Popen([sys.executable, *command], start_new_session=True,
                                env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(n)})
               for r in range(n)]
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    sys.exit(max(w.wait() for w in workers))
    """
)


def fake_torchrun_command(folder: Path) -> tuple[str, ...]:
    """What replaces core.runs.jobs.TORCHRUN in tests: the stand-in above, with the flag torchrun gets first."""
    script = Path(folder) / "fake_torchrun.py"
    script.write_text(FAKE_TORCHRUN, encoding="utf-8")
    return (sys.executable, str(script), "--standalone")
