"""`python -m core.evaluate`: caption a dataset split with a model bundle and score it (core.metrics).

The scores are stored in the bundle's metrics.json under "<dataset folder>/<split>".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import DEFAULT_BEAM, DEFAULT_MAX_LEN
from .metrics import java_available, score_captions


def evaluate_bundle(model_dir: Path, data: Path, split: str = "val", beam: int = DEFAULT_BEAM,
                    max_len: int = DEFAULT_MAX_LEN, batch_size: int = 32, limit: int | None = None, device: str = "auto",
                    write: bool = True, on_progress=None) -> dict:
    """Caption every image of a split with a bundle, score against the references, store in metrics.json."""
    from .bundle import update_metrics
    from .caption import Captioner
    from .data import load_split

    items, _ = load_split(data, split)
    items = items[:limit] if limit else items
    captioner = Captioner(model_dir, device=device)
    results = captioner.caption([(str(it.path), it.path) for it in items], beam=beam, max_len=max_len,
                                batch_size=batch_size, on_progress=on_progress)
    refs = {str(it.path): it.captions for it in items}
    hyps = {r.image: r.caption for r in results if not r.error}
    metrics = score_captions(refs, hyps)
    metrics.update({"images": len(hyps), "distinct_captions": len(set(hyps.values())), "beam": beam,
                    "split": f"{Path(data).name}/{split}", "tokenizer": "PTB" if java_available() else "python"})
    if write:
        update_metrics(model_dir, {f"{Path(data).name}/{split}": metrics})
    return metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model bundle folder (default: models/default)")
    p.add_argument("--data", required=True, help="dataset folder in COCO or Flickr layout")
    p.add_argument("--split", default="val")
    p.add_argument("--beam", type=int, default=DEFAULT_BEAM)
    p.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="score only the first N images")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-write", action="store_true", help="do not store the metrics in the bundle")
    args = p.parse_args(argv)
    from .bundle import DEFAULT_MODEL

    metrics = evaluate_bundle(Path(args.model or DEFAULT_MODEL), Path(args.data), args.split, args.beam, args.max_len,
                              args.batch_size, args.limit, args.device, write=not args.no_write,
                              on_progress=lambda d, n: print(f"\rcaptioned {d}/{n}", end="", file=sys.stderr))
    print(file=sys.stderr)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
