"""Fault drill: kill a real training run with SIGKILL at 10 moments, resume it each time, and check the damage.

    .venv/bin/python tools/fault_drill.py [--kills 10] [--seed 0] [--keep DIR]

It draws a small dataset of coloured shapes, trains an uninterrupted reference run, then trains the same
configuration again, killing it during start-up, encoding, training, checkpointing, validation and SCST and
resuming each time. It prints the steps lost per kill (at most one checkpoint interval), whether any
half-written file was ever found in place of a whole one, whether the feature cache maps every image to its
own features, and whether the final weights equal the uninterrupted run's. Takes a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.runs import folder as runs  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
           "purple": (140, 40, 160)}
PLAN = ["start-up", "encoding", "encoding", "training", "checkpointing", "validating", "training", "checkpointing",
        "scst", "validating"]
CHECKPOINT_EVERY = 8


def make_dataset(root: Path, per_kind: int = 8) -> Path:
    rows, names, rng = [], [], np.random.default_rng(0)
    for colour, rgb in COLOURS.items():
        for shape in ("square", "stripe"):
            for k in range(per_kind):
                arr = np.full((64, 64, 3), 255, np.uint8)
                if shape == "square":
                    arr[:] = rgb
                else:
                    arr[::6] = arr[1::6] = arr[2::6] = rgb
                arr = np.clip(arr.astype(int) + rng.integers(-8, 8, arr.shape), 0, 255).astype(np.uint8)
                name = f"{colour}_{shape}_{k}.png"
                (root / "images").mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / "images" / name)
                names.append(name)
                rows += [(name, f"a {colour} {shape}"), (name, f"A {shape} that is {colour} .")]
    with open(root / "captions.txt", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("image", "caption"), *rows])
    (root / "drill_trainImages.txt").write_text("\n".join(n for i, n in enumerate(names) if i % 5) + "\n", "utf-8")
    (root / "drill_devImages.txt").write_text("\n".join(names[::5]) + "\n", "utf-8")
    return root


def config(data: Path, tmp: Path, cache: str) -> dict:
    return dict(data=str(data), decoder="attention", embed_dim=128, hidden_dim=256, attention_dim=128,
                feature_proj_dim=256, dropout=0.3, min_word_count=1, epochs=3, batch_size=4, lr=5e-3, warmup_steps=5, val_images=8, checkpoint_every=CHECKPOINT_EVERY,
                log_every=1, scst_epochs=1, scst_batch_size=8, scst_lr=1e-3, scst_samples=3, encode_batch_size=2,
                models_dir=str(tmp / "models"), cache_dir=str(tmp / cache), model_name="drill")


def launch(cfg_file: Path, run_dir: Path, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "core.train", "--config", str(cfg_file), "--run-dir", str(run_dir)]
    return subprocess.Popen(cmd + (["--resume"] if resume else []), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def tmp_files(run_dir: Path) -> list[Path]:
    return [*run_dir.glob(".*.tmp"), *(run_dir / runs.BEST).glob(".*.tmp")]


def wait_for_moment(proc, run_dir: Path, target: str, seen_before: int, rng: random.Random) -> None:
    """Return at a moment of phase `target` of this attempt (or when the attempt is about to finish)."""
    t0 = time.time()
    delay = {"start-up": rng.uniform(0.05, 2.0), "encoding": rng.uniform(0.0, 0.6), "training": rng.uniform(0, 1.0),
             "validating": rng.uniform(0.0, 0.05), "scst": rng.uniform(0.0, 0.3)}.get(target, 0.0)
    hit = None
    while proc.poll() is None:
        if target == "start-up":
            if time.time() - t0 >= delay:
                return
        elif target == "checkpointing":
            if list(run_dir.glob(f".{runs.CHECKPOINT}.*.tmp")):  # a checkpoint is being written right now
                return
        else:
            events = runs.read_progress(run_dir)[seen_before:]
            if hit is None and any(e["event"] == "phase" and e.get("phase") == target for e in events):
                hit = time.time()
            if hit is None and target == "training" and any(e["event"] == "step" for e in events):
                hit = time.time()
            if hit is None and any(e["event"] == "phase" and e.get("phase") == "saving" for e in events):
                return  # the phase did not come in this attempt: kill before the model is published
            if hit is not None and time.time() - hit >= delay:
                return
        time.sleep(0.001 if target == "checkpointing" else 0.01)


def whole_files(run_dir: Path, cache_root: Path) -> list[str]:
    """Every file the trainer reads, checked to be whole: -> the ones that are not."""
    from safetensors import safe_open

    bad = []
    for path in [run_dir / runs.CONFIG, run_dir / runs.VOCAB, *(run_dir / runs.BEST).glob("*.json")]:
        if path.exists():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                bad.append(str(path))
    for path in [run_dir / runs.CHECKPOINT, run_dir / runs.BEST / "model.safetensors"]:
        if path.exists():
            try:
                with safe_open(str(path), framework="pt") as f:
                    [f.get_tensor(k) for k in f.keys()]
            except Exception:
                bad.append(str(path))
    return bad


def cache_mismatches(cache_root: Path, images: list[Path]) -> tuple[int, int]:
    """(images whose cached features differ from a fresh encoding, images checked)."""
    import torch

    from core.nn.backbones import get_spec
    from core.nn.batches import iter_image_batches
    from core.nn.precision import encoder_autocast
    from core.nn.features import FeatureCache, file_identity
    from core.nn.model import Encoder

    spec = get_spec("efficientnet_lite0")
    cache = FeatureCache(cache_root, "efficientnet_lite0", "grid", (7, 7))
    encoder, device, wrong, checked = Encoder("efficientnet_lite0", pretrained=True).eval(), torch.device("cpu"), 0, 0
    with torch.no_grad():
        for idx, batch, _ in iter_image_batches(images, spec.image_size, spec.mean, spec.std, 8):
            with encoder_autocast(device):
                feats = encoder(batch).float().half().numpy()  # (n, P, C)
            for k, i in enumerate(idx):
                entry = cache.lookup(file_identity(images[i]))
                if entry is None:  # not used by the run (beyond val_images)
                    continue
                checked += 1
                row = entry["row"]
                wrong += not np.allclose(cache.array()[row].astype(np.float32), feats[k].astype(np.float32),
                                         atol=2e-2, rtol=2e-2)
    return wrong, checked


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(path).items() if k.startswith("model/")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=len(PLAN))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="fault-drill-"))
    data = make_dataset(tmp / "data")
    t0 = time.time()

    ref_cfg, drill_cfg = tmp / "reference.json", tmp / "drill.json"
    ref_cfg.write_text(json.dumps(config(data, tmp, "cache-reference")), encoding="utf-8")
    drill_cfg.write_text(json.dumps(config(data, tmp, "cache-drill")), encoding="utf-8")
    ref_run, run_dir = tmp / "reference", tmp / "drilled"
    assert launch(ref_cfg, ref_run, resume=False).wait() == 0, "the reference run failed"
    print(f"reference run: {runs.read_progress(ref_run)[-1]['event']} in {time.time() - t0:.0f} s")

    kills, bad_files, tmp_left, errors = [], [], 0, 0
    for k in range(args.kills):
        if any(e["event"] == "done" for e in runs.read_progress(run_dir)):
            print(f"the run finished after {k} kills; no more moments to kill it at")
            break
        target = PLAN[k % len(PLAN)]
        seen = len(runs.read_progress(run_dir))
        proc = launch(drill_cfg, run_dir, resume=k > 0)
        wait_for_moment(proc, run_dir, target, seen, rng)
        if proc.poll() is not None:
            print(f"kill {k + 1}: the run ended before the kill ({target}); stopping the drill early")
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        events = runs.read_progress(run_dir)
        mine = events[seen:]
        phase = next((e["phase"] for e in reversed(mine) if e["event"] == "phase"), "start-up")
        left = tmp_files(run_dir)
        tmp_left += len(left)
        if phase == "training" and left:
            phase = "checkpointing"
        done = max([e["step"] for e in events if e["event"] == "step"], default=0)
        kills.append({"target": target, "phase": phase, "steps_done": done, "tmp_left": len(left), "seen": seen})
        bad_files += whole_files(run_dir, tmp / "cache-drill")
        errors += sum(e["event"] == "error" for e in mine)

    final_seen = len(runs.read_progress(run_dir))
    done_already = any(e["event"] == "done" for e in runs.read_progress(run_dir))
    code = 0 if done_already else launch(drill_cfg, run_dir, resume=True).wait()
    events = runs.read_progress(run_dir)
    errors += sum(e["event"] == "error" for e in events)
    # steps lost per kill: steps done before it minus the step the next attempt resumed from
    starts = [i for i, e in enumerate(events) if e["event"] == "start"]
    launches = [k["seen"] for k in kills] + [final_seen]
    for n, kill in enumerate(kills):  # the first later attempt that got going tells where the work picked up again
        nxt = next((i for i in starts if i >= launches[n + 1]), None)
        if nxt is None:
            kill["lost"] = 0
            continue
        end = next((i for i in starts if i > nxt), len(events))
        at = next((e["step"] for e in events[nxt:end] if e["event"] == "resumed"), 0)
        kill["lost"] = max(0, kill["steps_done"] - at)
    leftovers_now = tmp_files(run_dir)

    images = sorted((data / "images").glob("*.png"))
    wrong, checked = cache_mismatches(tmp / "cache-drill", images)
    a, b = weights(ref_run / runs.CHECKPOINT), weights(run_dir / runs.CHECKPOINT)
    same = a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    bundles = [next(e["bundle"] for e in runs.read_progress(r) if e["event"] == "done") for r in (ref_run, run_dir)]
    from safetensors.torch import load_file

    pa, pb = (load_file(Path(p) / "model.safetensors") for p in bundles)
    same_bundle = pa.keys() == pb.keys() and all(np.array_equal(pa[k].numpy(), pb[k].numpy()) for k in pa)

    print("kill | aimed at      | killed in     | steps done | steps lost | .tmp left by the kill")
    for i, kill in enumerate(kills, 1):
        print(f"{i:4d} | {kill['target']:13s} | {kill['phase']:13s} | {kill['steps_done']:10d} | "
              f"{kill.get('lost', '?'):>10} | {kill['tmp_left']}")
    lost = [k.get("lost", 0) for k in kills]
    print(f"runs completed: {int(code == 0 and any(e['event'] == 'done' for e in events))} of 1 (after {len(kills)} kills, "
          f"{len(starts)} starts)")
    print(f"steps lost per kill: max {max(lost, default=0)}, mean {np.mean(lost) if lost else 0:.1f} "
          f"(checkpoint interval {CHECKPOINT_EVERY} steps): {'OK' if max(lost, default=0) <= CHECKPOINT_EVERY else 'TOO MANY'}")
    print(f"half-written files found in place of whole ones: {len(bad_files)}; error events on resume: {errors}; "
          f".tmp files left by kills: {tmp_left}, still there at the end: {len(leftovers_now)}")
    print(f"feature cache: {wrong} of {checked} images point at features other than their own")
    print(f"final weights equal to the uninterrupted run's: {'yes' if same else 'NO'} "
          f"(checkpoint), {'yes' if same_bundle else 'NO'} (published model)")
    print(f"drill time: {time.time() - t0:.0f} s; folder: {tmp}")
    ok = (code == 0 and same and same_bundle and not bad_files and not errors and not leftovers_now and not wrong
          and max(lost, default=0) <= CHECKPOINT_EVERY)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
