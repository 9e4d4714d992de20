"""Writing captions a person has reviewed into a library's outputs, without captioning again.

The second step of "caption, review, then write": the reviewed text (the page's table, or a CSV edited in a
spreadsheet: `python -m core.caption FOLDER --from-csv reviewed.csv --sidecar-ext .txt --metadata`) goes through
core.caption.library's own Library (its plan of what each photo still lacks, its writers and their checks), as a
captioning run would write it. Only the photos the review names are touched.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from core.caption.library import Library, LibraryConfig, Progress
from core.caption.result import CaptionResult
from core.caption.store import read_review_csv
from core.data.images import find_images


def reviewed_results(results: list[CaptionResult]) -> dict[str, CaptionResult]:
    """The rows worth writing, by image name: a caption, and no error."""
    return {r.image: r for r in results if not r.error and (r.caption or "").strip()}


def write_reviewed(cfg: LibraryConfig, results: list[CaptionResult],
                   on_progress: Callable[[Progress], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> tuple[Progress, list[str]]:
    """Write each result's caption (its alternatives too, with cfg.decode.num_captions > 1) to cfg's outputs, for the
    library's photos the results name; cfg.existing decides about photos that already have a caption, as when
    captioning. Returns (progress, the names of the results that match no photo of the library)."""
    by_name = reviewed_results(results)
    lib = Library(cfg)
    try:
        images = [p for p in find_images(lib.root, cfg.recursive, cfg.include, cfg.exclude) if lib.name(p) in by_name]
        plan = lib.plan(images)
        progress = Progress(0, len(plan), len(images) - len(plan), 0, 0.0, None, [])
        t0 = time.perf_counter()
        for start in range(0, len(plan), max(cfg.batch_size, 1)):
            chunk = plan[start:start + max(cfg.batch_size, 1)]
            progress.latest = [lib.write(path, outputs, _scored(by_name[lib.name(path)])) for path, outputs in chunk]
            lib.sync()
            lib.save_coco()
            progress.done += len(chunk)
            progress.failed += sum(1 for row in progress.latest if row["error"])
            progress.images_per_s = progress.done / max(time.perf_counter() - t0, 1e-9)
            progress.eta_s = (progress.total - progress.done) / progress.images_per_s
            if on_progress:
                on_progress(progress)
            if should_stop and should_stop():
                break
    finally:
        lib.close()
    found = {lib.name(p) for p in images}
    return progress, sorted(set(by_name) - found)


def _scored(r: CaptionResult) -> CaptionResult:
    """The library's CSV writer formats every score: a row a person added in a spreadsheet may have none."""
    if r.score is None or any(s is None for _, s in r.alternatives):
        r = CaptionResult(r.image, r.caption, r.score or 0.0, [(c, s or 0.0) for c, s in r.alternatives],
                          tags=r.tags, confidence=r.confidence, check=r.check)
    return r


def write_from_csv(cfg: LibraryConfig, csv_path: Path | str, on_progress=None) -> tuple[Progress, list[str], int]:
    """write_reviewed with the rows of a CSV (core.caption.library's columns; `image` and `caption` are what count).
    Returns (progress, names matching no photo, rows read); raises FileNotFoundError/ValueError with a message."""
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"there is no file {path}")
    results = read_review_csv(path)
    if not reviewed_results(results):
        raise ValueError(f"{path} holds no captions (it needs the columns image and caption, as captions.csv has)")
    progress, missing = write_reviewed(cfg, results, on_progress=on_progress)
    return progress, missing, len(results)
