"""On-disk cache of backbone features, so a frozen backbone sees each image once, not once per epoch.

One folder per (backbone, preprocessing, layout); inside, an append-only fp16 array read through a
memory map, and an index of file identities (resolved path, size, mtime) -> row. Rows are written and
fsynced before their index lines, so a killed run leaves at worst unindexed bytes, trimmed by the next
writer. Writers take an OS lock, so two trainers can fill one cache at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from filelock import FileLock

from core.base.files import atomic_write_text
from core.nn.backbones import get_spec
from core.nn.batches import iter_image_batches
from core.nn.precision import encoder_autocast

PREPROCESS_VERSION = "squash-bicubic/1"  # change when data.preprocess changes: old caches stop matching


def file_identity(path: Path) -> str:
    st = os.stat(path)
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


class FeatureCache:
    def __init__(self, root: Path, backbone: str, layout: str, grid_shape: tuple[int, int], variant: str = "",
                 channels: int | None = None):
        """layout "grid": (P, C) per image for attention; "pooled": (1, C), enough for Show-and-Tell.
        variant: what else made the features ("" the plain photos; core.train.augment's views name theirs), its own folder.
        channels: per cell, when not the backbone's output (a lower stage's output for fine-tuning the top ones)."""
        spec = get_spec(backbone)
        self.key = {"backbone": backbone, "image_size": spec.image_size, "mean": spec.mean, "std": spec.std,
                    "preprocess": PREPROCESS_VERSION, "layout": layout, "dtype": "float16"}
        if variant:  # only when set: the plain caches made before views existed keep their folder
            self.key["variant"] = variant
        digest = hashlib.sha1(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:12]
        self.dir = Path(root) / f"{backbone}-{layout}-{digest}"
        self.layout = layout
        self.row_shape = (grid_shape[0] * grid_shape[1] if layout == "grid" else 1, channels or spec.feature_dim)
        self.row_bytes = int(np.prod(self.row_shape)) * 2
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_file, self.index_file = self.dir / "features.f16", self.dir / "index.jsonl"
        # Several processes may fill one cache at once (the app's run and one from a terminal): every change
        # to the files happens under this OS lock, and a row's number is the data file's length at that moment.
        self.lock = FileLock(str(self.dir / "write.lock"))
        self.index: dict[str, dict] = {}
        self.n_rows = 0  # rows that index lines point at (the data file holds no others once caught up)
        self._read_upto = 0  # bytes of the index file read so far
        with self.lock:
            if not (self.dir / "key.json").exists():
                atomic_write_text(self.dir / "key.json", json.dumps(self.key, indent=2))
            self._catch_up()

    def _catch_up(self) -> None:
        """Under the lock: read the index lines written since the last call (by any process), and drop what a
        killed writer left half done: half an index line, rows without index lines."""
        raw = b""
        if self.index_file.exists():
            with open(self.index_file, "rb") as f:
                f.seek(self._read_upto)
                raw = f.read()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) != len(raw):
            with open(self.index_file, "r+b") as f:
                f.truncate(self._read_upto + len(complete))
        self._read_upto += len(complete)
        for line in complete.decode("utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            self.index[entry["id"]] = entry
            if entry.get("row") is not None:
                self.n_rows = max(self.n_rows, entry["row"] + 1)
        if self.data_file.exists() and self.data_file.stat().st_size > self.n_rows * self.row_bytes:
            with open(self.data_file, "r+b") as f:
                f.truncate(self.n_rows * self.row_bytes)

    def lookup(self, identity: str) -> dict | None:
        return self.index.get(identity)

    def refresh(self) -> None:
        """Read what other processes added since (e.g. the other torchrun ranks' shares of the images)."""
        with self.lock:
            self._catch_up()

    def rows(self, paths: list[Path]) -> list[int | None]:
        """The cache row of every path (None: not cached, or unreadable when it was tried)."""
        return [(self.lookup(file_identity(p)) or {}).get("row") for p in paths]

    def append(self, identities: list[str], feats: np.ndarray, failures: dict[str, str]) -> None:
        """feats (n, *row_shape) for identities, in order; failures: identity -> error message."""
        feats = np.ascontiguousarray(feats, dtype=np.float16)
        with self.lock:
            self._catch_up()  # rows other writers added since: ours are numbered after them
            first = self.n_rows
            with open(self.data_file, "ab") as f:
                f.write(feats.tobytes())
                f.flush()
                os.fsync(f.fileno())
            lines = [{"id": ident, "row": first + k} for k, ident in enumerate(identities)]
            lines += [{"id": ident, "row": None, "error": msg} for ident, msg in failures.items()]
            text = "".join(json.dumps(e) + "\n" for e in lines).encode("utf-8")
            with open(self.index_file, "ab") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            self._read_upto += len(text)
        for e in lines:
            self.index[e["id"]] = e
        self.n_rows = first + len(identities)

    def array(self) -> np.ndarray:
        """All rows as a read-only memory map: (n_rows, P, C) float16."""
        if self.n_rows == 0:
            return np.zeros((0, *self.row_shape), dtype=np.float16)
        return np.memmap(self.data_file, dtype=np.float16, mode="r", shape=(self.n_rows, *self.row_shape))


@torch.no_grad()
def encode_to_cache(encoder: torch.nn.Module, backbone: str, paths: list[Path], cache: FeatureCache,
                    device: torch.device, batch_size: int = 32,
                    on_progress: Callable[[dict], None] | None = None,
                    should_stop: Callable[[], bool] | None = None,
                    transform: Callable[[torch.Tensor, list[Path]], torch.Tensor] | None = None) -> list[int | None]:
    """Encode the images not yet cached; -> the cache row of every path (None: unreadable, skipped).
    transform(images (n, 3, S, S), their paths) -> images: e.g. an augmented view (core.train.augment)."""
    spec = get_spec(backbone)
    idents = [file_identity(p) for p in paths]
    first = {}
    for i, ident in enumerate(idents):
        first.setdefault(ident, i)
    todo = [i for ident, i in first.items() if cache.lookup(ident) is None]  # each distinct file once
    skipped = sum(1 for ident in idents if (cache.lookup(ident) or {}).get("row", 0) is None)
    encoder.eval()
    t0, done = time.time(), 0
    todo_paths = [paths[i] for i in todo]
    for idx, images, errors in iter_image_batches(todo_paths, spec.image_size, spec.mean, spec.std, batch_size):
        if len(idx):
            if transform is not None:
                images = transform(images, [todo_paths[i] for i in idx])
            with encoder_autocast(device):
                feats = encoder(images.to(device, non_blocking=True)).float()  # (n, P, C)
            if cache.layout == "pooled":
                feats = feats.mean(1, keepdim=True)  # (n, 1, C)
            cache.append([idents[todo[i]] for i in idx], feats.cpu().numpy(), {})
        if errors:
            cache.append([], np.zeros((0, *cache.row_shape)), {idents[todo[i]]: msg for i, msg in errors.items()})
        done += len(idx) + len(errors)
        skipped += len(errors)
        if on_progress:
            rate = done / max(time.time() - t0, 1e-6)
            on_progress({"done": done, "total": len(todo), "skipped": skipped, "images_per_s": round(rate, 2),
                         "eta_s": round((len(todo) - done) / max(rate, 1e-6), 1)})
        if should_stop and should_stop():
            break
    return [(cache.lookup(ident) or {}).get("row") for ident in idents]
