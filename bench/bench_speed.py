"""Speed benchmark: prints figures measured in one run on the same data and model.

1. Seconds per training epoch the seeds' way (the frozen encoder runs for every caption sample) vs with
   the feature cache (decoder only), for Show-and-Tell and for soft attention, and their ratio; the cached
   epoch in fp32 and in bf16 autocast (what the trainer's precision "auto" picks on CPUs with AVX512-BF16/AMX),
   as the decoder's training throughput in captions per second. The seeds' way runs its encoder in fp32, as
   the seeds did, and its decoder in the same precision as the cached epoch it is compared with.
   --compile adds the first epoch (compilation included) and a steady epoch with `TrainConfig.compile`.
2. Captioning images per second end to end (files on disk -> CSV rows, beam search included) vs the bare
   encoder forward on tensors already in memory.

    python bench/bench_speed.py --data ../shared/data/flickr8k --images 200
    python bench/bench_speed.py                 # synthetic photos-like images when no data is given
    python bench/bench_speed.py --threads 1 --cpu-time ...   # on a machine shared with other work
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.nn.backbones import get_spec  # noqa: E402
from core.nn.weights import save_bundle  # noqa: E402
from core.nn.captioner import Captioner  # noqa: E402
from core.base.config import DecodeOptions, ModelConfig, TrainConfig  # noqa: E402
from core.data.datasets import ImageCaptions, load_split  # noqa: E402
from core.nn.batches import iter_image_batches
from core.nn.precision import adamw, compile_decoder, train_precision  # noqa: E402
from core.nn.features import FeatureCache, encode_to_cache  # noqa: E402
from core.nn.model import CaptionModel, Encoder  # noqa: E402
from core.train.trainer import FeatureSource, caption_loss, pad_captions  # noqa: E402
from core.data.vocabulary import Vocabulary  # noqa: E402


def synthetic_items(folder: Path, n: int) -> list[ImageCaptions]:
    from PIL import Image

    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        arr = (rng.random((375, 500, 3)) * 255).astype(np.uint8)
        path = folder / f"{i}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        items.append(ImageCaptions(path, [f"a photo number {i % 7} of a thing"] * 5))
    return items


def seeds_epoch(model, encoder, items, samples, batch_size, spec, precision="fp32", clock=time.perf_counter) -> float:
    """One epoch as the seed projects train: load + encode the image of every caption sample, every epoch."""
    cpu = torch.device("cpu")
    opt, amp = adamw(model.decoder.parameters(), cpu, lr=1e-4), train_precision(cpu, precision)  # as the trainer
    t = clock()
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        _, images, _ = next(iter_image_batches([items[i].path for i, _ in chunk], spec.image_size, spec.mean,
                                               spec.std, len(chunk)))
        with torch.no_grad():
            feats = encoder(images)  # (B, P, C)
        if model.cfg.decoder == "show_tell":
            feats = feats.mean(1, keepdim=True)
        with amp.autocast():
            loss = caption_loss(model, feats, pad_captions([c for _, c in chunk]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clock() - t


def cached_epoch(model, source, samples, batch_size, precision="fp32", clock=time.perf_counter) -> float:
    cpu = torch.device("cpu")
    opt, amp = adamw(model.decoder.parameters(), cpu, lr=1e-4), train_precision(cpu, precision)  # as the trainer
    t = clock()
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        with amp.autocast():
            loss = caption_loss(model, source([i for i, _ in chunk], "cpu"), pad_captions([c for _, c in chunk]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clock() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="dataset folder (COCO or Flickr layout); synthetic images when omitted")
    p.add_argument("--images", type=int, default=100, help="images in the benchmark epoch")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=TrainConfig().batch_size, help="default: the trainer's")
    p.add_argument("--caption-images", type=int, default=64)
    p.add_argument("--model", help="bundle for the captioning figures (default: an untrained attention model)")
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"),
                   help="the cached epoch that the seeds' way is compared with (both are timed)")
    p.add_argument("--compile", action="store_true", help="also time the cached epoch with torch.compile")
    p.add_argument("--threads", type=int, help="torch threads (default: PyTorch's choice)")
    p.add_argument("--cpu-time", action="store_true",
                   help="time the epochs in CPU seconds of this process, not wall seconds: on a machine busy with "
                        "other work the wall time measures the others (use with --threads 1: no spinning threads)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter  # process_time: all this process's threads
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    items = load_split(args.data, "train")[0][: args.images] if args.data else synthetic_items(tmp, args.images)
    vocab = Vocabulary.build((c for it in items for c in it.captions), min_count=1)
    samples = [(i, vocab.encode(c)[:22]) for i, it in enumerate(items) for c in it.captions]
    spec = get_spec(args.backbone)
    encoder = Encoder(args.backbone, pretrained=True).eval()
    grid = (spec.image_size // 32,) * 2
    auto = train_precision(torch.device("cpu"), "auto")
    print(f"{len(items)} images, {len(samples)} caption samples per epoch, backbone {args.backbone}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
          f"precision auto = {auto.label} here ({auto.reason}); epochs timed in "
          f"{'CPU' if args.cpu_time else 'wall'} seconds")

    t = time.perf_counter()
    caches = {}
    for layout in ("pooled", "grid"):
        caches[layout] = FeatureCache(tmp / "cache", args.backbone, layout, grid)
        rows = encode_to_cache(encoder, args.backbone, [it.path for it in items], caches[layout], torch.device("cpu"))
    encode_s = (time.perf_counter() - t) / 2
    print(f"one-time feature encoding: {encode_s:.1f} s ({len(items) / encode_s:.1f} images/s)")

    for decoder in ("show_tell", "attention"):
        cfg = ModelConfig(vocab_size=len(vocab), backbone=args.backbone, decoder=decoder)
        model = CaptionModel(cfg, with_encoder=False).train()
        layout = "grid" if decoder == "attention" else "pooled"
        source = FeatureSource(cache_array=caches[layout].array(), rows=rows)
        cached_epoch(model, source, samples[: args.batch_size * 2], args.batch_size)  # warm-up: allocator, threads
        # fp32 and bf16 interleaved, best of 2 each: a load change on this shared machine hits both alike
        cached = {p: [] for p in ("fp32", "bf16")}
        for _ in range(2):
            for p in cached:
                cached[p].append(cached_epoch(model, source, samples, args.batch_size, p, clock))
        cached = {p: min(v) for p, v in cached.items()}
        seeds = seeds_epoch(model, encoder, items, samples, args.batch_size, spec, args.precision, clock)
        c = cached[args.precision]
        print(f"{decoder:>10}: seeds' way {seeds:7.1f} s/epoch | cached {c:6.2f} s/epoch ({args.precision}) | "
              f"{seeds / c:5.1f}x faster | decoder training: "
              + ", ".join(f"{p} {len(samples) / t:.0f} captions/s" for p, t in cached.items())
              + f" (bf16 {cached['fp32'] / cached['bf16']:.2f}x fp32)")
        if args.compile:
            compiled = CaptionModel(cfg, with_encoder=False).train()
            compile_decoder(compiled.decoder)
            first = cached_epoch(compiled, source, samples, args.batch_size, args.precision, clock)
            steady = min(cached_epoch(compiled, source, samples, args.batch_size, args.precision, clock)
                         for _ in range(2))
            print(f"{'':>10}  torch.compile ({args.precision}): first epoch {first:.1f} s (compiling included) | "
                  f"then {steady:.2f} s/epoch, {len(samples) / steady:.0f} captions/s, {c / steady:.2f}x eager")

    # captioning: end to end vs the bare encoder forward
    if args.model:
        bundle = Path(args.model)
    else:
        cfg = ModelConfig(vocab_size=len(vocab), backbone=args.backbone, decoder="attention")
        bundle = save_bundle(tmp / "bundle", CaptionModel(cfg, with_encoder=False), vocab)
    captioner = Captioner(bundle, device="cpu")
    spec = captioner.spec
    files = [(str(it.path), it.path) for it in items[: args.caption_images]]
    n = len(files)
    captioner.caption(files[:16], batch_size=16)  # warm-up
    t = time.perf_counter()
    captioner.caption(files, DecodeOptions(beam=3), batch_size=16)
    e2e = n / (time.perf_counter() - t)
    _, images, _ = next(iter_image_batches([f for _, f in files[:16]], spec.image_size, spec.mean, spec.std, 16))
    with torch.no_grad():
        captioner.model.encode(images)
        t = time.perf_counter()
        for _ in range(math.ceil(n / 16)):
            captioner.model.encode(images)
    bare = math.ceil(n / 16) * 16 / (time.perf_counter() - t)
    print(f"captioning {n} files with {bundle.name} ({spec.name}, {captioner.bundle.config.decoder}), beam 3: "
          f"{e2e:.1f} images/s end to end | bare encoder {bare:.1f} images/s | ratio {e2e / bare:.2f}")


if __name__ == "__main__":
    main()
