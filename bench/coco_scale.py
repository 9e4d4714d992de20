"""COCO-2017 at full size, rehearsed: build a COCO-shaped dataset (118,287 training images, ~591,753 captions,
5,000 validation images) and run the real trainer (`python -m core.train`, a subprocess) through it.

    .venv/bin/python bench/coco_scale.py --source-captions /work/shared/data/coco_val2017_mini/captions_val2017.json

Captions are real COCO text: the source file's captions, reused and varied (one word swapped for a word of the
source, drawn by frequency) so every one is new and the vocabulary keeps COCO's shape. Images are hard links to a
handful of small generated JPEGs, so the folder costs megabytes, yet every file has its own path (and so its own
feature-cache row).

Runs, and what each measures (peak RSS of the trainer from psutil, children included, sampled every 0.1 s; the
process's own ru_maxrss as the exact total):
1. FULL size: load + vocabulary, the feature-cache look-up of 123,287 images (the bench pre-fills the cache with
   random pooled features, because encoding them all takes hours on this CPU), `--steps` training steps (one
   "epoch" capped by --max-steps-per-epoch), validation on the 5,000 images, checkpoint, SIGKILL mid-epoch after a
   checkpoint, resume, finish.
2. FRACTIONS (--fractions): the trainer with --subset f encodes f of the images for real into a fresh cache; two
   fractions show that encoding time is linear in the images, and give the rate the projections use.
Figures are printed as a table; the projection of a full run (all images encoded, --epochs epochs) uses the
measured CPU rates and, for one GPU, the rates given by the --gpu-* flags (assumptions: there is no GPU here).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.runs import folder as runs  # noqa: E402  (no torch: the bench's own memory stays out of the way)

COCO_TRAIN_IMAGES, COCO_TRAIN_CAPTIONS, COCO_VAL_IMAGES = 118_287, 591_753, 5_000


# ---------------------------------------------------------------------------------------------- dataset

def _vary(caption: str, rng: random.Random, pool: list[str]) -> str:
    """The caption with one word replaced by a word of the source text (drawn by frequency)."""
    words = caption.split()
    if len(words) > 2:
        k = rng.randrange(1, len(words) - 1)  # not the first word (its capital) nor the last (its period)
        words[k] = rng.choice(pool)
    return " ".join(words)


def _small_jpegs(folder: Path, n: int, seed: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        base = rng.integers(0, 256, 3)
        noise = rng.integers(-40, 40, (96, 128, 3))
        arr = np.clip(base + noise, 0, 255).astype(np.uint8)  # (H, W, 3): a coloured texture, ~4 KB as JPEG
        path = folder / f"pool_{k:02d}.jpg"
        if not path.exists():  # rewriting it would change every hard link's mtime, so every cache identity
            Image.fromarray(arr).save(path, "JPEG", quality=80)
        out.append(path)
    return out


def _link_images(names: list[str], folder: Path, pool: list[Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        target = folder / name
        if not target.exists():
            try:
                os.link(pool[k % len(pool)], target)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(pool[k % len(pool)], target)


def build_dataset(root: Path, source: Path, n_train: int = COCO_TRAIN_IMAGES, n_captions: int = COCO_TRAIN_CAPTIONS,
                  n_val: int = COCO_VAL_IMAGES, n_jpegs: int = 16, seed: int = 0) -> dict:
    """root/annotations/captions_{train,val}2017.json + root/images/{train,val}2017/*.jpg; -> counts."""
    src = json.loads(Path(source).read_text(encoding="utf-8"))
    by_image: dict[int, list[str]] = {}
    for a in src["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["caption"])
    src_images = [im for im in src["images"] if by_image.get(im["id"])]
    src_captions = [a["caption"] for a in src["annotations"]]
    if not src_images:
        raise SystemExit(f"{source} has no captioned images")
    pool_words = [w for c in src_captions for w in c.split()[1:-1]] or ["a"]
    rng = random.Random(seed)
    pool = _small_jpegs(root / "_pool", n_jpegs, seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    meta = {k: src.get(k, v) for k, v in (("info", {}), ("licenses", []))}

    # validation: the source's own images and captions (the real val2017 when it has 5,000), cycled if more are asked
    val_images, val_anns = [], []
    for j in range(n_val):
        im = src_images[j % len(src_images)]
        image_id = im["id"] if j < len(src_images) else 10_000_000 + j
        val_images.append({**im, "id": image_id, "file_name": f"{image_id:012d}.jpg"})
        val_anns += [{"image_id": image_id, "id": 0, "caption": c} for c in by_image[im["id"]]]
    # training: new image ids; n_captions captions, 5 per image and the rest one more each, source text varied
    per_image = np.full(n_train, n_captions // n_train, dtype=np.int64)
    per_image[rng.sample(range(n_train), n_captions - int(per_image.sum()))] += 1
    train_images, train_anns, k = [], [], 0
    for j in range(n_train):
        im = src_images[j % len(src_images)]
        image_id = 1_000_000 + j
        train_images.append({**im, "id": image_id, "file_name": f"{image_id:012d}.jpg",
                             "coco_url": "", "flickr_url": ""})
        for _ in range(per_image[j]):
            text = src_captions[k % len(src_captions)]
            train_anns.append({"image_id": image_id, "id": 0,
                               "caption": text if k < len(src_captions) else _vary(text, rng, pool_words)})
            k += 1
    for split, images, anns in (("train", train_images, train_anns), ("val", val_images, val_anns)):
        for n, a in enumerate(anns):
            a["id"] = n + 1
        path = root / "annotations" / f"captions_{split}2017.json"
        path.write_text(json.dumps({**meta, "images": images, "annotations": anns}), encoding="utf-8")
        _link_images([im["file_name"] for im in images], root / "images" / f"{split}2017", pool)
    return {"train_images": n_train, "train_captions": len(train_anns), "val_images": n_val,
            "val_captions": len(val_anns)}


# ---------------------------------------------------------------------------------------------- trainer runs

def _disk_bytes(folder: Path) -> int:
    """Bytes allocated under `folder`, each file once however many hard links it has (like du)."""
    seen = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            try:
                st = os.stat(os.path.join(dirpath, f))
            except OSError:
                continue
            seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return sum(seen.values())


class Trainer:
    """`python -m core.train ARGS` with its events (stdout, one JSON per line) timed on arrival and its resident
    memory (the process and its children) sampled every 0.1 s."""

    def __init__(self, args: list[str], cache: Path, log: Path):
        import psutil

        self.t0 = time.monotonic()
        self.events: list[tuple[float, dict]] = []
        self.rss: list[tuple[float, int]] = []
        self.cpu: list[tuple[float, float]] = []  # CPU seconds (user + system, children included): shared cores
        # make wall times depend on the other jobs; CPU time is the work itself
        self.cache, self.cache_bytes = cache, []
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "core.train", *args], cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=self.log)
        self.ps = psutil.Process(self.proc.pid)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.events.append((time.monotonic() - self.t0, json.loads(line)))
            except ValueError:
                pass

    def _sample(self):
        import psutil

        try:
            procs = [self.ps, *self.ps.children(recursive=True)]
            now = time.monotonic() - self.t0
            self.rss.append((now, sum(p.memory_info().rss for p in procs)))
            self.cpu.append((now, sum(sum(p.cpu_times()[:4]) for p in procs)))
        except psutil.Error:
            pass

    def wait(self, until=None, timeout: float = 3600) -> int | None:
        """Sample until the process ends, or until `until(events)` is true (-> None, still running)."""
        last_disk = 0.0
        while self.proc.poll() is None:
            self._sample()
            now = time.monotonic() - self.t0
            if now - last_disk > 2:
                self.cache_bytes.append((now, _disk_bytes(self.cache)))
                last_disk = now
            if until and until([e for _, e in self.events]):
                return None
            if now > timeout:
                self.proc.kill()
            time.sleep(0.1)
        time.sleep(0.2)  # the reader thread's last lines
        self.cache_bytes.append((time.monotonic() - self.t0, _disk_bytes(self.cache)))
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.cache_bytes.append((time.monotonic() - self.t0, _disk_bytes(self.cache)))

    def at(self, test, nth: int = 0) -> float | None:
        """Arrival time of the nth event for which test(event) is true."""
        hits = [t for t, e in self.events if test(e)]
        return hits[nth] if len(hits) > nth else None

    def peak_rss(self, t0: float, t1: float) -> int:
        return max((r for t, r in self.rss if t0 <= t <= t1), default=0)

    def cpu_between(self, t0: float, t1: float) -> float | None:
        inside = [c for t, c in self.cpu if t0 <= t <= t1]
        before = [c for t, c in self.cpu if t < t0]
        return inside[-1] - (before[-1] if before else 0.0) if inside else None

    def cache_at(self, t: float) -> int:
        return min(self.cache_bytes, key=lambda x: abs(x[0] - t))[1] if self.cache_bytes else 0


def phase(name):
    return lambda e: e.get("event") == runs.PHASE and e.get("phase") == name


def event(name, **match):
    return lambda e: e.get("event") == name and all(e.get(k) == v for k, v in match.items())


def stages(tr: Trainer, marks: list[tuple[str, float | None, float | None]]) -> list[dict]:
    rows = []
    for name, a, b in marks:
        if a is None or b is None:
            rows.append({"stage": name, "seconds": None, "cpu": None, "peak_rss": None, "cache": None})
            continue
        rows.append({"stage": name, "seconds": b - a, "cpu": tr.cpu_between(a, b), "peak_rss": tr.peak_rss(a, b),
                     "cache": tr.cache_at(b)})
    return rows


def _trainer_args(data: Path, cache: Path, run_dir: Path, a, **extra) -> list[str]:
    flags = {"data": data, "run_dir": run_dir, "cache_dir": cache, "models_dir": run_dir.parent / "models",
             "decoder": a.decoder, "backbone": a.backbone, "batch_size": a.batch_size, "val_images": COCO_VAL_IMAGES,
             "log_every": 10, "checkpoint_minutes": 1000, "device": "cpu", "model_name": run_dir.name, **extra}
    return [x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def prefill_cache(cache_root: Path, backbone: str, decoder: str, paths: list[Path]) -> int:
    """Random features for every image, written through core.nn.features as encoding would: -> rows written."""
    from core.nn.backbones import get_spec
    from core.nn.features import FeatureCache, file_identity

    spec = get_spec(backbone)
    grid = (spec.image_size // 32, spec.image_size // 32)
    cache = FeatureCache(cache_root, backbone, "grid" if decoder == "attention" else "pooled", grid)
    idents = [file_identity(p) for p in paths]
    todo = [i for i in idents if cache.lookup(i) is None]
    rng = np.random.default_rng(0)
    for start in range(0, len(todo), 4096):
        chunk = todo[start:start + 4096]
        cache.append(chunk, rng.standard_normal((len(chunk), *cache.row_shape), dtype=np.float32), {})
    return len(todo)


def full_size_run(a, data: Path, work: Path) -> tuple[list[dict], dict]:
    cache, run_dir = work / "cache_full", work / "run_full"
    shutil.rmtree(run_dir, ignore_errors=True)
    from core.data.datasets import load_split

    t = time.monotonic()
    paths = [it.path for split in ("train", "val") for it in load_split(data, split)[0]]
    written = prefill_cache(cache, a.backbone, a.decoder, paths)
    print(f"pre-filled the cache with {written:,} random rows for {len(paths):,} images "
          f"({time.monotonic() - t:.0f} s)", flush=True)
    K = a.steps
    args = _trainer_args(data, cache, run_dir, a, epochs=2, max_steps_per_epoch=K, checkpoint_every=K + K // 2)
    tr = Trainer(args, cache, work / "trainer_full.log")
    # kill -9 once the mid-epoch-2 checkpoint is on disk: what a crash or a pulled plug does
    tr.wait(until=lambda ev: any(e.get("event") == runs.SAVED and e.get("step") == K + K // 2 for e in ev))
    t_kill = time.monotonic() - tr.t0
    tr.kill()
    first = tr
    res = Trainer(args + ["--resume"], cache, work / "trainer_full.log")
    rc = res.wait()
    if rc != 0:
        raise SystemExit(f"the resumed trainer failed (exit {rc}); see {work / 'trainer_full.log'}")

    f = first
    t_start = f.at(event(runs.START))
    t_enc = f.at(phase("encoding"))
    t_train = f.at(phase("training"))
    t_val = f.at(phase("validating"))
    t_epoch = f.at(event(runs.EPOCH))
    t_saved = f.at(event(runs.SAVED, step=K))
    first_step = f.at(event(runs.STEP, step=10))
    last_step = f.at(event(runs.STEP, step=K))
    r_start, r_first = res.at(event(runs.RESUMED)), res.at(lambda e: e.get("event") == runs.STEP)
    r_val, r_epoch = res.at(phase("validating")), res.at(event(runs.EPOCH))
    rows = stages(f, [("trainer start-up (imports)", 0.0, t_start), ("load + vocabulary (FULL size)", t_start, t_enc),
                      ("feature cache look-up (pre-filled)", t_enc, t_train),
                      (f"training steps 11..{K}", first_step, last_step),
                      ("validation on 5,000 images", t_val, t_epoch), ("checkpoint (end of epoch)", t_epoch, t_saved),
                      ("epoch 2 until mid-epoch checkpoint, SIGKILL", t_saved, t_kill)])
    rows += stages(res, [("resume: start until first step", 0.0, r_first),
                         ("resume: finish epoch, validate, publish", r_first, res.at(event(runs.DONE)))])
    steps = [(t, e) for t, e in f.events if e.get("event") == runs.STEP and 10 <= e["step"] <= K]
    step_s = (steps[-1][0] - steps[0][0]) / (steps[-1][1]["step"] - steps[0][1]["step"])
    lines = [e for _, e in f.events if e.get("event") == runs.LOG_EVENT]
    facts = {"step_s": step_s, "step_cpu": f.cpu_between(steps[0][0], steps[-1][0]) / (steps[-1][1]["step"]
                                                                                   - steps[0][1]["step"]),
             "val_cpu": f.cpu_between(t_val, t_epoch) if t_val and t_epoch else None, "val_s": (t_epoch - t_val) if t_val and t_epoch else None,
             "load_vocab_s": t_enc - t_start, "resume_batch": next((e.get("batch") for _, e in res.events
                                                                   if e.get("event") == runs.RESUMED), None),
             "resume_start_s": r_start, "peak_rss_all": max(f.peak_rss(0, 1e9), res.peak_rss(0, 1e9)),
             "cache_bytes": _disk_bytes(cache), "log": [e.get("message") for e in lines],
             "val_metrics": next((e.get("metrics") for _, e in res.events if e.get("event") == runs.EPOCH), None),
             "n_samples_total": None}
    return rows, facts


def fraction_run(a, data: Path, work: Path, fraction: float) -> dict:
    tag = f"{fraction:g}".replace(".", "_")
    cache, run_dir = work / f"cache_{tag}", work / f"run_{tag}"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    args = _trainer_args(data, cache, run_dir, a, epochs=1, subset=fraction, max_steps_per_epoch=a.fraction_steps)
    tr = Trainer(args, cache, work / f"trainer_{tag}.log")
    rc = tr.wait()
    if rc != 0:
        raise SystemExit(f"the trainer failed on fraction {fraction} (exit {rc}); see {work}/trainer_{tag}.log")
    t_enc, t_train = tr.at(phase("encoding")), tr.at(phase("training"))
    last = [e for _, e in tr.events if e.get("event") == runs.ENCODE][-1]  # encode_to_cache's own clock
    pure_s = last["done"] / last["images_per_s"]
    n = next(e for _, e in tr.events if e.get("event") == runs.LOG_EVENT and "training and" in e.get("message", ""))
    counts = [int(x.replace(",", "")) for x in re.findall(r"[\d,]+", n["message"])[:2]]
    return {"fraction": fraction, "images": last["done"], "listed": sum(counts), "encode_s": pure_s,
            "encode_phase_s": t_train - t_enc, "encode_cpu_s": tr.cpu_between(t_enc, t_train),
            "load_vocab_s": t_enc - tr.at(event(runs.START)), "peak_rss": tr.peak_rss(0, 1e9),
            "cache_bytes": _disk_bytes(cache)}


def tokenizer_figures(data: Path, n: int = 20_000) -> None:
    """CPU time per caption of nltk's Treebank path (core.evaluate.metrics.tokenize) and of core.data.vocabulary's exact shortcut,
    on n of the training captions, with what each costs for all of them (before: twice, vocabulary + encoding)."""
    from core.evaluate.metrics import tokenize
    from core.data.vocabulary import fast_tokenize

    anns = json.loads((data / "annotations" / "captions_train2017.json").read_text(encoding="utf-8"))["annotations"]
    captions = [a["caption"] for a in random.Random(0).sample(anns, min(n, len(anns)))]
    tokenize("warm up")
    t = time.process_time()
    slow = [tokenize(c) for c in captions]
    slow_us = (time.process_time() - t) / len(captions) * 1e6
    t = time.process_time()
    fast = [fast_tokenize(c) for c in captions]
    fast_us = (time.process_time() - t) / len(captions) * 1e6
    assert fast == slow, "fast_tokenize must give the scorer's tokens"
    total = len(anns)
    print(f"tokenizing {len(captions):,} of the {total:,} captions (CPU time): nltk Treebank {slow_us:.0f} us/caption, "
          f"exact shortcut {fast_us:.0f} us/caption ({slow_us / fast_us:.1f}x, same tokens); all {total:,}: "
          f"{2 * slow_us * total / 1e6:.0f} s before (tokenised for the vocabulary and again for encoding), "
          f"{fast_us * total / 1e6:.0f} s now (once)", flush=True)


# ---------------------------------------------------------------------------------------------- report

def _fmt_s(s):
    return "-" if s is None else (f"{s:,.1f} s" if s < 120 else f"{s / 60:,.1f} min" if s < 7200 else f"{s / 3600:,.1f} h")


def _fmt_b(b):
    return "-" if b is None else f"{b / 2 ** 20:,.0f} MiB" if b < 2 ** 30 else f"{b / 2 ** 30:,.2f} GiB"


def print_table(rows):
    print(f"\n(load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores)"
          "\n| stage | wall time | CPU time | peak RSS of the trainer | feature cache on disk |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {_fmt_s(r['seconds'])} | {_fmt_s(r.get('cpu'))} | {_fmt_b(r['peak_rss'])} "
              f"| {_fmt_b(r['cache'])} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source-captions", type=Path, required=True, help="a COCO caption file (real caption text)")
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "coco_scale",
                   help="where the dataset and the runs go (never the repository)")
    p.add_argument("--train-images", type=int, default=COCO_TRAIN_IMAGES)
    p.add_argument("--train-captions", type=int, default=COCO_TRAIN_CAPTIONS)
    p.add_argument("--val-images", type=int, default=COCO_VAL_IMAGES)
    p.add_argument("--build-only", action="store_true", help="build the dataset and stop")
    p.add_argument("--tokenizer-only", action="store_true", help="build, measure the tokenizers, and stop")
    p.add_argument("--fractions", type=float, nargs="*", default=[0.01, 0.02],
                   help="shares of the data encoded for real (time linear in the data)")
    p.add_argument("--steps", type=int, default=100, help="training steps of the full-size run's first epoch")
    p.add_argument("--fraction-steps", type=int, default=10)
    p.add_argument("--decoder", default="show_tell")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10, help="epochs of the projected full run")
    p.add_argument("--gpu-encode-ips", type=float, default=1000.0,
                   help="ASSUMED images/s of encoding on one GPU (JPEG decoding on its host's cores bounds it)")
    p.add_argument("--gpu-step-ms", type=float, default=8.0, help="ASSUMED ms per training step on one GPU")
    p.add_argument("--gpu-val-ips", type=float, default=2000.0, help="ASSUMED images/s of validation on one GPU")
    a = p.parse_args(argv)
    root = a.root.resolve()
    if REPO in (root, *root.parents):
        raise SystemExit(f"{root} is inside the repository; give --root a folder elsewhere")
    data, work = root / "coco", root / "work"
    work.mkdir(parents=True, exist_ok=True)

    t = time.monotonic()
    built = build_dataset(data, a.source_captions, a.train_images, a.train_captions, a.val_images)
    build_s = time.monotonic() - t
    print(f"dataset: {built} in {data} ({build_s:.0f} s, {_disk_bytes(data) / 2 ** 20:,.0f} MiB on disk)", flush=True)
    if a.build_only:
        return 0
    tokenizer_figures(data)
    if a.tokenizer_only:
        return 0

    from core.nn.backbones import get_spec

    rows, facts = full_size_run(a, data, work)
    fr = [fraction_run(a, data, work, f) for f in a.fractions]
    print_table([{"stage": "build the dataset (bench, not the trainer)", "seconds": build_s, "cpu": None,
                  "peak_rss": None, "cache": None}] + rows)
    print(f"\nexact peak RSS of the trainer (ru_maxrss, largest process): "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20:,.2f} GiB; "
          f"sampled peak with children: {_fmt_b(facts['peak_rss_all'])}")
    print(f"trainer's log: {facts['log']}")
    print(f"validation after the short first epoch: {facts['val_metrics']}")

    print("\n| fraction | images encoded | encoding (encoder loaded) | whole encoding phase | its CPU time | images/s "
          "| load + vocabulary | cache on disk | peak RSS |\n|---|---|---|---|---|---|---|---|---|")
    for r in fr:
        print(f"| {r['fraction']:g} | {r['images']:,} | {_fmt_s(r['encode_s'])} | {_fmt_s(r['encode_phase_s'])} "
              f"| {_fmt_s(r['encode_cpu_s'])} "
              f"| {r['images'] / r['encode_s']:.1f} | "
              f"{_fmt_s(r['load_vocab_s'])} | {_fmt_b(r['cache_bytes'])} | {_fmt_b(r['peak_rss'])} |")
    if len(fr) >= 2:
        x, y = fr[0], fr[-1]
        print(f"linearity: {y['images'] / x['images']:.2f}x the images took {y['encode_s'] / x['encode_s']:.2f}x "
              f"the encoding time and {y['cache_bytes'] / max(x['cache_bytes'], 1):.2f}x the cache")
    ips = sum(r["images"] for r in fr) / sum(r["encode_s"] for r in fr) if fr else None

    n_images = a.train_images + a.val_images
    spec = get_spec(a.backbone)
    grid = (spec.image_size // 32) ** 2
    steps_epoch = math.ceil(a.train_captions / a.batch_size)
    print(f"\ncache for all {n_images:,} images: pooled (Show-and-Tell) {_fmt_b(n_images * spec.feature_dim * 2)}, "
          f"{int(grid ** .5)}x{int(grid ** .5)} grid (attention) {_fmt_b(n_images * grid * spec.feature_dim * 2)}")
    cpu = {"encode": n_images / ips if ips else None, "epoch": steps_epoch * facts["step_s"], "val": facts["val_s"]}
    cores = os.cpu_count() or 1
    cpu_work = sum(r["encode_cpu_s"] for r in fr) / sum(r["images"] for r in fr) if fr else None
    quiet = {"encode": n_images * cpu_work / cores if cpu_work else None,
             "epoch": steps_epoch * facts["step_cpu"] / cores,
             "val": facts["val_cpu"] / cores if facts["val_cpu"] else None}
    gpu = {"encode": n_images / a.gpu_encode_ips, "epoch": steps_epoch * a.gpu_step_ms / 1000,
           "val": COCO_VAL_IMAGES / a.gpu_val_ips}
    print(f"\nprojection of a full run: {n_images:,} images encoded once, {a.epochs} epochs of {steps_epoch:,} steps "
          f"(batch {a.batch_size}), validation on 5,000 images after each\n"
          "| | encoding | one epoch | validation | full run |\n|---|---|---|---|---|")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    for name, d in ((f"this CPU, measured wall times (shared: load average {load})", cpu),
                    (f"this CPU, alone (CPU time / {cores} cores)", quiet), (f"one GPU (ASSUMED: {a.gpu_encode_ips:g} images/s encoding, "
                                                        f"{a.gpu_step_ms:g} ms/step, {a.gpu_val_ips:g} images/s "
                                                        "validation)", gpu)):
        total = None if None in d.values() else d["encode"] + a.epochs * (d["epoch"] + d["val"])
        print(f"| {name} | {_fmt_s(d['encode'])} | {_fmt_s(d['epoch'])} | {_fmt_s(d['val'])} | {_fmt_s(total)} |")
    print(f"\ntraining step (batch {a.batch_size}, {a.decoder}) on this CPU: {facts['step_s'] * 1000:.0f} ms wall "
          f"({a.batch_size / facts['step_s']:.0f} captions/s), {facts['step_cpu'] * 1000:.0f} ms CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
