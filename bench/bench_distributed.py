"""Distributed training benchmark: the same run as 1 process and under torchrun as N processes, one after the
other in this run, figures from the trainer's own progress events.

    python bench/bench_distributed.py --data ../shared/data/flickr8k --subset 0.1 --nproc 2

Prints, per setting: seconds of cross-entropy training per epoch (first step to the epoch's last step,
start-up, encoding and validation excluded), captions per second, validation seconds, wall time of the
whole command, and the ratio of the training times. On CPU, torchrun gives each rank OMP_NUM_THREADS=1;
the single process keeps PyTorch's default (one thread per core), so both use the same cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.runs.folder import read_progress  # noqa: E402


def measure(cmd: list[str], run_dir: Path, env: dict) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run(cmd + ["--run-dir", str(run_dir)], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    events = read_progress(run_dir)
    t_train = next(e["time"] for e in events if e["event"] == "phase" and e.get("phase") == "training")
    steps = [e for e in events if e["event"] == "step" and e["epoch"] == 1]
    epoch = next(e for e in events if e["event"] == "epoch")
    return {"train_s": steps[-1]["time"] - t_train, "steps": steps[-1]["step"], "val_s": epoch["time"] - steps[-1]["time"],
            "wall_s": wall, "loss": epoch["train_loss"], "val_images": epoch.get("val_images")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--subset", type=float, default=0.1)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--decoder", default="attention")
    p.add_argument("--backbone", default="efficientnet_lite2")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (every setting trains the same batches)")
    p.add_argument("--val-images", type=int, default=200)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    flags = ["-m", "core.train", "--data", args.data, "--subset", str(args.subset), "--decoder", args.decoder,
             "--backbone", args.backbone, "--batch-size", str(args.batch_size), "--epochs", "1",
             "--val-images", str(args.val_images), "--device", "cpu", "--log-every", "5",
             "--models-dir", str(tmp / "models"), "--checkpoint-every", "100000"]
    env = dict(os.environ)
    settings = {
        "1 process": [sys.executable, *flags],
        f"torchrun {args.nproc} processes": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                             "--nproc-per-node", str(args.nproc), *flags],
    }
    results = {}
    for name, cmd in settings.items():
        results[name] = r = measure(cmd, tmp / name.replace(" ", "-"), env)
        captions = r["steps"] * args.batch_size
        print(f"{name:>22}: training {r['train_s']:7.1f} s/epoch ({r['steps']} steps, {captions / r['train_s']:6.1f} "
              f"captions/s) | validation {r['val_s']:5.1f} s ({r['val_images']} images) | command {r['wall_s']:6.1f} s"
              f" | epoch loss {r['loss']:.4f}", flush=True)
    one, many = results.values()
    print(f"training speed-up with {args.nproc} processes: {one['train_s'] / many['train_s']:.2f}x "
          f"(cpu cores here: {os.cpu_count()})")
    print(json.dumps({"config": vars(args), "results": results}))


if __name__ == "__main__":
    main()
