import subprocess
import sys
import time

import numpy as np
import torch

from conftest import make_image
from core.nn.features import FeatureCache, encode_to_cache, file_identity


class CountingEncoder(torch.nn.Module):
    """Stands in for the CNN: mean colour per grid cell, and counts the images it sees."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    def forward(self, x):
        self.seen += x.size(0)
        B = x.size(0)
        grid = torch.nn.functional.adaptive_avg_pool2d(x, 7)  # (B, 3, 7, 7)
        return grid.flatten(2).transpose(1, 2).repeat(1, 1, 1280 // 3 + 1)[:, :, :1280].reshape(B, 49, 1280)


def _images(tmp_path, n=5):
    return [make_image(tmp_path / f"{i}.png", ["red", "blue"][i % 2], "square", seed=i) for i in range(n)]


def test_second_pass_is_a_cache_hit(tmp_path):
    paths = _images(tmp_path)
    enc = CountingEncoder()
    cache = FeatureCache(tmp_path / "cache", "efficientnet_lite0", "grid", (7, 7))
    rows = encode_to_cache(enc, "efficientnet_lite0", paths, cache, torch.device("cpu"), batch_size=2)
    assert enc.seen == 5 and sorted(rows) == [0, 1, 2, 3, 4]
    again = FeatureCache(tmp_path / "cache", "efficientnet_lite0", "grid", (7, 7))  # a later run
    assert encode_to_cache(enc, "efficientnet_lite0", paths, again, torch.device("cpu")) == rows
    assert enc.seen == 5  # nothing encoded twice
    feats = again.array()
    assert feats.dtype == np.float16 and feats.shape == (5, 49, 1280)


def test_changed_file_or_other_backbone_is_a_miss(tmp_path):
    paths = _images(tmp_path, 2)
    enc = CountingEncoder()
    cache = FeatureCache(tmp_path / "cache", "efficientnet_lite0", "grid", (7, 7))
    encode_to_cache(enc, "efficientnet_lite0", paths, cache, torch.device("cpu"))
    make_image(paths[0], "green", "stripe", seed=9)  # same name, new content
    encode_to_cache(enc, "efficientnet_lite0", paths, cache, torch.device("cpu"))
    assert enc.seen == 3
    other = FeatureCache(tmp_path / "cache", "efficientnet_lite2", "grid", (8, 8))
    assert other.dir != cache.dir


def test_pooled_layout_stores_one_vector_per_image(tmp_path):
    paths = _images(tmp_path, 3)
    cache = FeatureCache(tmp_path / "cache", "efficientnet_lite0", "pooled", (7, 7))
    encode_to_cache(CountingEncoder(), "efficientnet_lite0", paths, cache, torch.device("cpu"))
    assert cache.array().shape == (3, 1, 1280)


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    paths = _images(tmp_path, 3)
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    events = []
    cache = FeatureCache(tmp_path / "cache", "efficientnet_lite0", "grid", (7, 7))
    rows = encode_to_cache(CountingEncoder(), "efficientnet_lite0", paths + [tmp_path / "bad.jpg"], cache,
                           torch.device("cpu"), on_progress=events.append)
    assert rows[3] is None and None not in rows[:3]
    assert events[-1]["skipped"] == 1 and events[-1]["done"] == 4


def test_a_killed_write_is_trimmed_on_open(tmp_path):
    paths = _images(tmp_path, 2)
    cache = FeatureCache(tmp_path / "cache", "efficientnet_lite0", "pooled", (7, 7))
    encode_to_cache(CountingEncoder(), "efficientnet_lite0", paths, cache, torch.device("cpu"))
    with open(cache.data_file, "ab") as f:  # rows written but never indexed
        f.write(b"\0" * cache.row_bytes * 3)
    with open(cache.index_file, "a") as f:  # and half an index line
        f.write('{"id": "half')
    reopened = FeatureCache(tmp_path / "cache", "efficientnet_lite0", "pooled", (7, 7))
    assert reopened.n_rows == 2 and reopened.array().shape == (2, 1, 1280)
    assert reopened.data_file.stat().st_size == 2 * cache.row_bytes


WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
import torch
from test_features import CountingEncoder
from core.nn.features import FeatureCache, encode_to_cache
paths = [Path(p) for p in sys.argv[2:]]
cache = FeatureCache(Path({cache!r}), "efficientnet_lite0", "pooled", (7, 7))
Path(sys.argv[1]).touch()  # opened: ready
while not Path({go!r}).exists():
    time.sleep(0.01)
encode_to_cache(CountingEncoder(), "efficientnet_lite0", paths, cache, torch.device("cpu"), batch_size=1)
"""


def test_two_processes_filling_one_cache_keep_every_row_with_its_image(tmp_path):
    # Regression: the app's run and a terminal's `python -m core.train` filling one cache at once numbered
    # their rows independently; most index lines then pointed at another image's features, silently, forever.
    from conftest import ROOT

    images = _images(tmp_path, 24)
    script = WRITER.format(tests=str(ROOT / "tests"), root=str(ROOT), cache=str(tmp_path / "cache"),
                           go=str(tmp_path / "go"))
    halves = (images[0::2], images[1::2])
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"ready{k}"), *map(str, half)])
             for k, half in enumerate(halves)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{k}").exists() for k in range(2)) and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    cache = FeatureCache(tmp_path / "cache", "efficientnet_lite0", "pooled", (7, 7))
    enc = CountingEncoder()
    expected = encode_to_cache(enc, "efficientnet_lite0", images, FeatureCache(tmp_path / "fresh", "efficientnet_lite0",
                                                                               "pooled", (7, 7)), torch.device("cpu"))
    fresh = FeatureCache(tmp_path / "fresh", "efficientnet_lite0", "pooled", (7, 7)).array()
    rows = [cache.lookup(file_identity(p))["row"] for p in images]
    assert len(set(rows)) == len(images) and cache.array().shape[0] >= len(images)
    for path, row, ref in zip(images, rows, expected):
        assert np.array_equal(cache.array()[row], fresh[ref]), f"{path.name} points at another image's features"
