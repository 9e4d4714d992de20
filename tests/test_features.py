import numpy as np
import torch

from conftest import make_image
from core.features import FeatureCache, encode_to_cache


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
