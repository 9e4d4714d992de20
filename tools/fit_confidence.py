"""Fit and check a model's caption confidence (core.caption.confidence) on a dataset split, through the app's captioner.

    python tools/fit_confidence.py --data ../shared/data/flickr8k --split val [--model models/default] [--write]
        [--photos FOLDER] [--out captions.json]

Captions every photo of the split exactly as the app does (core.nn.captioner: beam 3, object words, the person rule),
scores each caption's CIDEr-D against its references, then fits the acceptable-caption curve twice, on one half of the
photos and checked on the other (and the other way round): with the beam score alone, and with the missed tag (the
likeliest confident object the caption leaves out) as a second input. It prints, for the held-out half, the flagged
captions' mean CIDEr and their share of acceptable ones against the rest. `--write` stores the two-input curve fitted
on all photos in the bundle's metrics.json. `--photos` also captions a folder (e.g. photos unlike the training set)
and prints each caption with its confidence and flag under the written curve.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.base.config import DecodeOptions  # noqa: E402
from core.bundle.store import DEFAULT_MODEL, update_metrics  # noqa: E402
from core.caption.confidence import Calibration, fit_calibration, per_image_cider  # noqa: E402
from core.caption.tags import format_tags, missed_tag  # noqa: E402
from core.data.datasets import load_split  # noqa: E402
from core.data.images import find_images  # noqa: E402


def caption_all(captioner, paths: list[Path]) -> list:
    """The app's captions (default options; every tag above 0.1 kept, so missed_tag sees the confident ones)."""
    return captioner.caption([(str(p), p) for p in paths], DecodeOptions(max_tags=5), batch_size=32)


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")  # an empty group (no caption flagged) prints nan, no warning


def report(name: str, cider: np.ndarray, flagged: np.ndarray, acceptable: float) -> str:
    ok = cider >= acceptable
    return (f"{name}: flagged {flagged.sum()} of {len(cider)}; mean CIDEr flagged {100 * _mean(cider[flagged]):.1f} "
            f"vs others {100 * _mean(cider[~flagged]):.1f}; acceptable {_mean(ok[flagged]):.0%} of flagged vs "
            f"{_mean(ok[~flagged]):.0%} of others")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--write", action="store_true", help="store the two-input curve in the bundle's metrics.json")
    p.add_argument("--photos", type=Path, default=None, help="also caption this folder and show each flag")
    p.add_argument("--out", type=Path, default=None, help="write the split's captions, scores and flags here")
    args = p.parse_args(argv)
    from core.nn.captioner import Captioner

    captioner = Captioner(Path(args.model), device="cpu")
    items, _ = load_split(Path(args.data), args.split)
    items = items[: args.limit] if args.limit else items
    results = caption_all(captioner, [it.path for it in items])
    keep = [i for i, r in enumerate(results) if not r.error]
    refs = {i: items[i].captions for i in keep}
    cider_by = per_image_cider(refs, {i: results[i].caption for i in keep})
    cider = np.array([cider_by[i] for i in keep])
    scores = np.array([results[i].score for i in keep])
    missed = np.array([missed_tag(results[i].tags, results[i].words) for i in keep])
    print(f"{len(keep)} captions; {np.mean(missed > 0):.1%} leave out a confident object "
          f"(mean CIDEr {100 * _mean(cider[missed > 0]):.1f} vs {100 * _mean(cider[missed == 0]):.1f})")
    ref_list = [refs[i] for i in keep]
    for fit_rows, test_rows in ((slice(0, None, 2), slice(1, None, 2)), (slice(1, None, 2), slice(0, None, 2))):
        fit_refs = dict(enumerate(ref_list[fit_rows]))
        for name, use in (("score only", None), ("score + missed tag", missed)):
            cal = fit_calibration(scores[fit_rows], cider[fit_rows], refs=fit_refs,
                                  missed=None if use is None else use[fit_rows])
            test_missed = np.zeros_like(scores[test_rows]) if use is None else use[test_rows]
            conf = np.array([cal.confidence(s, m) for s, m in zip(scores[test_rows], test_missed)])
            print(report(f"held-out half, {name}", cider[test_rows], conf < cal.flag_below, cal.acceptable)
                  + f" (c = {cal.c:.2f})")
    cal = fit_calibration(scores, cider, refs=dict(enumerate(ref_list)), missed=missed)
    print(f"curve on all {len(keep)}: {cal.to_dict()}")
    if args.write:
        update_metrics(Path(args.model), {"confidence": cal.to_dict()})
        print(f"stored in {Path(args.model) / 'metrics.json'}")
    if args.out:
        args.out.write_text(json.dumps([{"image": str(items[i].path), "caption": results[i].caption,
                                         "score": results[i].score, "tags": format_tags(results[i].tags),
                                         "missed": float(m), "cider": float(c),
                                         "confidence": cal.confidence(results[i].score, float(m))}
                                        for i, m, c in zip(keep, missed, cider)], indent=1), encoding="utf-8")
    if args.photos:
        used = Calibration.from_dict(cal.to_dict())
        photos = find_images(args.photos)
        for path, r in zip(photos, caption_all(captioner, photos)):
            if r.error:
                print(f"{path.name}: {r.error}")
                continue
            conf = used.confidence(r.score, missed_tag(r.tags, r.words))
            print(f"{path.name}: {r.caption} [{format_tags(r.tags)}] confidence {conf:.2f}"
                  f"{'  CHECK' if conf < used.flag_below else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
