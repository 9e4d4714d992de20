"""Captioning images with a model bundle, and `python -m core.caption PATH... --out captions.csv`."""
from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .bundle import DEFAULT_MODEL, load_bundle
from .data import collect_images, iter_image_batches
from .decode import beam_search
from .device import encoder_autocast, pick_device

CSV_COLUMNS = ["image", "caption", "score", "alternatives", "error"]


@dataclass
class CaptionResult:
    image: str
    caption: str = ""
    score: float | None = None  # length-normalised log-probability of the caption (higher is surer)
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # the other beams, best first
    error: str | None = None
    words: list[str] = field(default_factory=list)
    attention: np.ndarray | None = None  # (len(words), grid_h, grid_w), attention models only


class Captioner:
    """A loaded bundle ready to caption batches of images; load once, call many times."""

    def __init__(self, bundle_path: Path | str | None = None, device: str = "auto"):
        self.device = pick_device(device)
        self.bundle = load_bundle(Path(bundle_path or DEFAULT_MODEL), self.device)
        self.model, self.vocab = self.bundle.model, self.bundle.vocab
        self.spec = self.model.spec
        self.has_attention = self.model.has_attention

    @torch.no_grad()
    def caption(self, items: list[tuple[str, Path | bytes]], beam: int = 3, max_len: int = 20, batch_size: int = 16,
                on_progress: Callable[[int, int], None] | None = None) -> list[CaptionResult]:
        """items: (name, path or bytes). One result per item, in order; a bad item gets `error`, not an exception."""
        results = [CaptionResult(name) for name, _ in items]
        sources = [src for _, src in items]
        done = 0
        s = self.spec
        for idx, images, errors in iter_image_batches(sources, s.image_size, s.mean, s.std, batch_size):
            for i, msg in errors.items():
                results[i].error = msg
            if len(idx):
                with encoder_autocast(self.device):
                    feats = self.model.encode(images.to(self.device)).float()  # (n, P, C)
                hyps = beam_search(self.model.decoder, feats, beam_size=beam, max_len=max_len)
                for i, image_hyps in zip(idx, hyps):
                    self._fill(results[i], image_hyps)
            done += len(idx) + len(errors)
            if on_progress:
                on_progress(done, len(items))
        return results

    def _fill(self, result: CaptionResult, hyps) -> None:
        best = hyps[0]
        result.words = [self.vocab.itos[t] for t in best.tokens]
        result.caption = " ".join(result.words)
        result.score = round(best.score, 4)
        result.alternatives = [(self.vocab.decode(h.tokens), round(h.score, 4)) for h in hyps[1:]]
        if best.alphas is not None and len(result.words):
            P = best.alphas.size(1)
            side = int(round(P ** 0.5))
            result.attention = best.alphas.view(-1, side, side).numpy()  # (words, h, w)


# --------------------------------------------------------------------------------------------- CSV

def _safe_cell(value) -> str:
    """Neutralise spreadsheet formulas (CSV injection): a cell starting with = + - @ tab or CR gets a leading '."""
    text = "" if value is None else str(value)
    if text[:1] not in ("=", "+", "-", "@", "\t", "\r"):
        return text
    try:
        float(text)  # a plain number such as a negative score is data, not a formula
        return text
    except ValueError:
        return "'" + text


def csv_rows(results: list[CaptionResult]) -> list[list[str]]:
    rows = [CSV_COLUMNS]
    for r in results:
        alts = " | ".join(c for c, _ in r.alternatives)
        score = "" if r.score is None else f"{r.score:.4f}"
        rows.append([_safe_cell(v) for v in (r.image, r.caption, score, alts, r.error or "")])
    return rows


def csv_bytes(results: list[CaptionResult]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(csv_rows(results))
    return buf.getvalue().encode("utf-8")


def write_csv(results: list[CaptionResult], path: Path) -> None:
    from .files import atomic_write_bytes

    atomic_write_bytes(Path(path), csv_bytes(results))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.caption", description="Caption image files and folders.")
    p.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--out", default="captions.csv", help="CSV file to write (default: captions.csv)")
    p.add_argument("--model", default=None, help="model bundle folder (default: models/default)")
    p.add_argument("--beam", type=int, default=3, help="beam width; 1 = greedy (default: 3)")
    p.add_argument("--max-len", type=int, default=20, help="longest caption in words (default: 20)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    args = p.parse_args(argv)
    files = collect_images(args.paths)
    if not files:
        print("no images found in " + " ".join(args.paths), file=sys.stderr)
        return 1
    captioner = Captioner(args.model, device=args.device)
    results = captioner.caption([(str(f), f) for f in files], beam=args.beam, max_len=args.max_len,
                                batch_size=args.batch_size,
                                on_progress=lambda d, n: print(f"\rcaptioned {d}/{n}", end="", file=sys.stderr))
    print(file=sys.stderr)
    write_csv(results, Path(args.out))
    bad = sum(1 for r in results if r.error)
    print(f"wrote {len(results)} rows to {args.out}" + (f" ({bad} could not be read)" if bad else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
