"""Captioning a photo library from disk, end to end, beside the bare encoder's rate, with peak memory.

    .venv/bin/python bench/bench_library.py                      # 1,000 photos made from scikit-image's samples
    .venv/bin/python bench/bench_library.py --photos ../shared/data/flickr8k/images --images 1000

End to end = `core.caption.library.caption_library` with its defaults (128 photos per beam search, encoded 32 at a
time): find the files, check what is done, decode and resize the JPEGs (in threads, one batch ahead), encode,
beam search, append the CSV rows. The bare encoder is the CNN alone on batches of 32 (core.nn.captioner.ENCODE_BATCH)
already in memory, the ceiling for the whole pipeline, timed on as many photos after each folder of 250 photos
(captioned as a library of its own), so that both see the same load on a shared machine. Peak memory is the
process's maximum RSS. The second line compares process CPU seconds per photo instead of wall time.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.nn.captioner import ENCODE_BATCH, Captioner  # noqa: E402
from core.nn.batches import iter_image_batches  # noqa: E402
from core.nn.precision import encoder_autocast  # noqa: E402
from core.base.config import DecodeOptions  # noqa: E402
from core.caption.library import LibraryConfig, caption_library  # noqa: E402
from core.data.images import find_images  # noqa: E402


def synthetic_photos(folder: Path, n: int) -> Path:
    """n 640x480 JPEGs: random crops, flips and colour shifts of scikit-image's bundled photos."""
    from skimage import data

    sources = [getattr(data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left")
               if hasattr(data, name)]
    sources = [s if s.ndim == 3 else np.stack([s] * 3, -1) for s in sources]
    rng = np.random.default_rng(0)
    for i in range(n):
        img = Image.fromarray(sources[i % len(sources)][..., :3])
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x, y, x + cw, y + ch)).resize((640, 480))
        if i % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.clip(np.asarray(img, np.int16) + rng.integers(-20, 20, 3), 0, 255).astype(np.uint8)
        sub = folder / f"{i // 250:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(sub / f"photo_{i:05d}.jpg", quality=90)
    return folder


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 1024 / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", help="a folder of real photos (default: synthetic ones from scikit-image)")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--model", default="models/default")
    p.add_argument("--batch-size", type=int, default=LibraryConfig.batch_size, help="photos per beam search")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-library-"))
    try:
        if args.photos:  # a copy of the first N, so that the benchmark's outputs never land in the user's folder
            folder = tmp / "photos"
            folder.mkdir()
            for i, f in enumerate(find_images(args.photos)[: args.images]):
                sub = folder / f"{i // 250:02d}"  # in folders of 250, as the synthetic ones
                sub.mkdir(exist_ok=True)
                shutil.copy(f, sub / f.name)
        else:
            folder = synthetic_photos(tmp / "photos", args.images)
        n = len(find_images(folder))
        captioner = Captioner(args.model, device=args.device)
        warm = [(str(f), f) for f in find_images(folder)[: args.batch_size]]
        captioner.caption(warm, DecodeOptions(beam=args.beam), batch_size=args.batch_size)  # first-call costs out of the timing
        rss_before = peak_rss_mb()
        s = captioner.spec
        enc_bs = -(-args.batch_size // -(-args.batch_size // ENCODE_BATCH))  # the chunks iter_captions encodes
        _, images, _ = next(iter_image_batches([f for _, f in warm], s.image_size, s.mean, s.std, enc_bs))
        images = images.to(captioner.device)

        def bare_pass(steps: int) -> tuple[float, float]:
            """The encoder alone on `steps` batches: wall seconds and CPU seconds."""
            with torch.no_grad(), encoder_autocast(captioner.device):
                t, cpu = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    captioner.model.encode(images)
                if captioner.device.type == "cuda":
                    torch.cuda.synchronize()
            return time.perf_counter() - t, time.process_time() - cpu

        # Interleaved, so that both see the same load of a shared machine: each folder of 250 photos is captioned
        # as a library of its own, then the bare encoder runs on as many batches.
        e2e_s = e2e_cpu = bare_s = bare_cpu = 0.0
        done = bare_done = 0
        for sub in sorted(d for d in folder.iterdir() if d.is_dir()):
            cfg = LibraryConfig(str(sub), csv=str(tmp / f"{sub.name}.csv"), decode=DecodeOptions(beam=args.beam),
                                batch_size=args.batch_size)
            t, cpu = time.perf_counter(), time.process_time()
            pr = caption_library(cfg, captioner)
            e2e_s, e2e_cpu = e2e_s + time.perf_counter() - t, e2e_cpu + time.process_time() - cpu
            done += pr.done
            steps = -(-pr.done // enc_bs)
            w, c = bare_pass(steps)
            bare_s, bare_cpu, bare_done = bare_s + w, bare_cpu + c, bare_done + steps * len(images)
        e2e, bare = done / e2e_s, bare_done / bare_s
        rss_after = peak_rss_mb()
        source = f"{args.photos} (first {n})" if args.photos else f"{n} synthetic 640x480 JPEGs"
        print(f"library of {source}, model {Path(args.model).name} ({s.name}), beam {args.beam}, batch "
              f"{args.batch_size} (encoder {enc_bs}), device {captioner.device}, {torch.get_num_threads()} threads")
        print(f"end to end: {done} photos in {e2e_s:.1f} s = {e2e:.1f} images/s | bare encoder "
              f"{bare:.1f} images/s | ratio {e2e / bare:.2f} | peak RSS {rss_after:.0f} MB "
              f"(after loading the model {rss_before:.0f} MB)")
        print(f"CPU time per photo: end to end {1000 * e2e_cpu / done:.1f} ms | bare encoder "
              f"{1000 * bare_cpu / bare_done:.1f} ms | ratio {bare_cpu / bare_done / (e2e_cpu / done):.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
