"""Captioning time per photo of two or more models on the same photos, as the app captions them (files on disk,
encoder, beam search with object words), measured in turns (A B A B ...) so that a shared machine's load falls on
all of them alike. Prints wall-clock and CPU milliseconds per photo (CPU time: all threads of this process).

    python bench/compare_caption_time.py --data ../shared/data/flickr8k --images 200 models/default models/new
    python bench/compare_caption_time.py --data ../shared/data/flickr8k --beams 3,5 models/default   # one model, two widths
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.nn.captioner import Captioner  # noqa: E402
from core.base.config import DecodeOptions  # noqa: E402
from core.data.datasets import load_split  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--split", default="val")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--beam", type=int, default=DecodeOptions.beam)
    p.add_argument("--beams", default="", help="comma-separated beam widths, each timed for every model (e.g. 3,5)")
    args = p.parse_args(argv)
    beams = [int(b) for b in args.beams.split(",") if b.strip()] or [args.beam]
    items, _ = load_split(args.data, args.split)
    photos = [(it.path.name, it.path) for it in items[: args.images]]
    loaded = {m: Captioner(m, device="cpu") for m in args.models}
    runs = [(m, b) for m in args.models for b in beams]  # timed in turns: (model, beam width)
    for m, b in runs:
        loaded[m].caption(photos[:16], DecodeOptions(beam=b))  # warm-up
    wall = {r: [] for r in runs}
    cpu = {r: [] for r in runs}
    for _ in range(args.rounds):
        for m, b in runs:
            t, c = time.perf_counter(), time.process_time()
            loaded[m].caption(photos, DecodeOptions(beam=b))
            wall[m, b].append((time.perf_counter() - t) * 1e3 / len(photos))
            cpu[m, b].append((time.process_time() - c) * 1e3 / len(photos))
    for m, b in runs:
        print(json.dumps({"model": str(m), "beam": b, "photos": len(photos), "wall_ms_per_photo": round(min(wall[m, b]), 1),
                          "cpu_ms_per_photo": round(min(cpu[m, b]), 1), "rounds": args.rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
