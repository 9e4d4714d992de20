"""Free disk space against what the feature cache is about to write, checked before encoding starts.

A COCO-sized cache of EfficientNet-Lite0's 7x7 grid is ~15 GB (123,287 images x 49 x 1280 x 2 bytes); failing
on a full disk hours into encoding loses the night, so the trainer stops at once with the figures instead.
Show-and-Tell needs only pooled features (core.nn.features layout "pooled": one 1280-wide row per image, ~0.3 GB).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from core.base.paths import CACHE_ENV

MARGIN_BYTES = 1 << 30  # left free for the checkpoints, the bundle and everything else on the disk
MARGIN_FRACTION = 0.05  # ... or this share of the cache, whichever is more


class DiskSpaceError(OSError):
    """The cache will not fit; the message says how much is needed, how much is free, and where."""


def _gb(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} bytes"


def cache_bytes_needed(rows_to_write: int, row_bytes: int) -> int:
    return max(0, rows_to_write) * row_bytes


def check_cache_space(folder: Path | str, rows_to_write: int, row_bytes: int, what: str = "the feature cache") -> int:
    """Raise DiskSpaceError when `rows_to_write` rows of `row_bytes` (plus a margin) do not fit on the disk that
    holds `folder`; -> the bytes needed."""
    need = cache_bytes_needed(rows_to_write, row_bytes)
    if need == 0:
        return 0
    folder = Path(folder)
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path.cwd())
    free = shutil.disk_usage(probe).free
    margin = max(MARGIN_BYTES, int(need * MARGIN_FRACTION))
    if need + margin > free:
        raise DiskSpaceError(
            f"not enough disk space for {what}: {rows_to_write:,} images x {row_bytes:,} bytes = {_gb(need)} to write "
            f"(plus {_gb(margin)} kept free), but only {_gb(free)} is free on the disk of {folder}. Free some space, "
            f"or point the cache elsewhere (cache folder / {CACHE_ENV}), or train on a fraction of the data.")
    return need


def check_cache_fits(cache, paths: list[Path]) -> int:
    """check_cache_space for the images of `paths` that `cache` (a core.nn.features.FeatureCache) lacks."""
    from core.nn.features import file_identity

    rows = sum(1 for ident in {file_identity(p) for p in paths} if cache.lookup(ident) is None)
    return check_cache_space(cache.dir, rows, cache.row_bytes, f"the feature cache ({cache.layout} layout)")
