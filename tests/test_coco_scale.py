"""COCO at full size, in small: the rehearsal's dataset builder, the refusal of a partly unzipped COCO (dry run and
run), the train/val overlap in the run's log, and the disk-space check before encoding."""
import json
import os
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from conftest import ROOT, make_image, tiny_train_config
from core.train import diskspace
from core.runs import folder as runs
from core.data.datasets import inspect_dataset, load_split

sys.path.insert(0, str(ROOT / "bench"))
import coco_scale  # noqa: E402

Usage = namedtuple("Usage", "total used free")


def _source(path: Path, n_images=6) -> Path:
    """A small COCO caption file in the real one's structure (info, licenses, images, annotations)."""
    images = [{"license": 1, "file_name": f"{i:012d}.jpg", "coco_url": "", "height": 48, "width": 64,
               "date_captured": "2013-11-14 17:02:52", "flickr_url": "", "id": i} for i in range(1, n_images + 1)]
    anns = [{"image_id": i, "id": 10 * i + k, "caption": f"A {c} dog runs on the grass number {k}."}
            for i, c in zip(range(1, n_images + 1), ["red", "brown", "black", "white", "small", "big"] * 9)
            for k in range(5)]
    path.write_text(json.dumps({"info": {"year": 2017}, "licenses": [{"id": 1}], "images": images,
                                "annotations": anns}))
    return path


def test_the_builder_makes_a_coco_shaped_dataset(tmp_path):
    root = tmp_path / "coco"
    built = coco_scale.build_dataset(root, _source(tmp_path / "src.json"), n_train=30, n_captions=152, n_val=8)
    assert built == {"train_images": 30, "train_captions": 152, "val_images": 8, "val_captions": 40}
    train, missing = load_split(root, "train")
    val, _ = load_split(root, "val")
    assert (len(train), len(val), missing) == (30, 8, 0)
    assert sorted(len(it.captions) for it in train) == [5] * 28 + [6] * 2
    src = [a["caption"] for a in json.loads((tmp_path / "src.json").read_text())["annotations"]]
    ann = json.loads((root / "annotations" / "captions_train2017.json").read_text())
    captions = [a["caption"] for a in ann["annotations"]]
    assert captions[:30] == src  # the source text first, then the same text varied by one word
    assert all(sum(x != y for x, y in zip(c.split(), src[k % 30].split())) <= 1 for k, c in enumerate(captions))
    assert len(set(captions) - set(src)) > 60
    assert os.stat(train[0].path).st_nlink > 1  # hard links to a handful of JPEGs
    info = inspect_dataset(root)
    assert info.ok and info.notes == [] and info.splits == {"train": 30, "val": 8}
    assert set(ann) == {"info", "licenses", "images", "annotations"}
    assert len({a["id"] for a in ann["annotations"]}) == 152


def test_the_tokenizer_figures_run_on_a_built_dataset(tmp_path, capsys):
    root = tmp_path / "coco"
    coco_scale.build_dataset(root, _source(tmp_path / "src.json"), n_train=10, n_captions=50, n_val=2)
    coco_scale.tokenizer_figures(root, n=40)
    assert "40 of the 50 captions" in capsys.readouterr().out


def test_the_bench_refuses_to_write_into_the_repository():
    with pytest.raises(SystemExit, match="inside the repository"):
        coco_scale.main(["--source-captions", "x.json", "--root", str(ROOT / "tmp_coco")])


def _half_unzipped(root: Path) -> Path:
    """train2017 lists 200 images, 11 are on disk; val2017 holds 4 images, one of them a training image's copy."""
    for split, listed, present, first in (("train", 200, 11, 0), ("val", 3, 3, 1000)):
        images = [{"id": first + k, "file_name": f"{first + k:012d}.jpg"} for k in range(listed)]
        for im in images[:present]:
            make_image(root / "images" / f"{split}2017" / im["file_name"], "red", "square", seed=im["id"])
        if split == "val":
            (root / "images" / "val2017" / images[0]["file_name"]).unlink()
            images[0]["file_name"] = "000000000001.jpg"  # the same file as a training image
            (root / "images" / "val2017" / "000000000001.jpg").write_bytes(
                (root / "images" / "train2017" / "000000000001.jpg").read_bytes())
        anns = [{"id": im["id"], "image_id": im["id"], "caption": "a red square"} for im in images]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"captions_{split}2017.json").write_text(json.dumps({"images": images,
                                                                                    "annotations": anns}))
    return root


def test_dry_run_shows_missing_images_and_overlap(tmp_path, capsys):
    from core.train.trainer import main

    data = _half_unzipped(tmp_path / "coco")
    assert main(["--dry-run", "--data", str(data)]) == 1
    out = json.loads(capsys.readouterr().out)["dataset"]
    assert out["problems"][0].startswith("train2017: 11 of 200 images found (is the unzip complete?)")
    assert out["notes"][0].startswith("1 of the 3 val2017 images are also in train2017")
    assert main(["--dry-run", "--data", str(data), "--allow-missing", "true"]) == 0
    out = json.loads(capsys.readouterr().out)["dataset"]
    assert out["problems"] == [] and len(out["notes"]) == 2


def test_the_run_refuses_a_partly_unzipped_coco_unless_allowed(tmp_path):
    from core.train.trainer import _load_data

    data = _half_unzipped(tmp_path / "coco")
    log = []
    emit = lambda event, **kw: log.append((event, kw))  # noqa: E731
    with pytest.raises(ValueError, match=r"train2017: 11 of 200 images found \(is the unzip complete\?\)"):
        _load_data(tiny_train_config(data, tmp_path), emit)
    train, val = _load_data(tiny_train_config(data, tmp_path, allow_missing=True), emit)
    assert (len(train), len(val)) == (11, 3)
    messages = [kw["message"] for event, kw in log if event == runs.LOG_EVENT]
    assert any(m.startswith("1 of the 3 val2017 images are also in train2017") for m in messages)
    assert any(m.startswith("train2017: 11 of 200 images found") for m in messages)


def test_allow_missing_is_a_flag_and_a_config_field():
    from core.base.config import TrainConfig, flag_fields

    assert ("allow_missing", False, "train") in flag_fields()
    assert TrainConfig.from_dict({"allow_missing": True}).allow_missing is True


def test_disk_check_counts_only_rows_to_write_and_keeps_a_margin(tmp_path, monkeypatch):
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda p: Usage(10 ** 12, 0, 5 * 10 ** 9))
    assert diskspace.check_cache_space(tmp_path / "not" / "yet", 1000, 2560) == 2_560_000
    assert diskspace.check_cache_space(tmp_path, 0, 2560) == 0
    with pytest.raises(diskspace.DiskSpaceError, match=r"123,287 images x 125,440 bytes = 15.5 GB to write"):
        diskspace.check_cache_space(tmp_path, 123_287, 49 * 1280 * 2)  # Lite0's 7x7 grid on COCO
    with pytest.raises(diskspace.DiskSpaceError, match="kept free"):  # fits, but not with the 1 GB margin
        diskspace.check_cache_space(tmp_path, 1000, 4_500_000)


def test_the_trainer_stops_before_encoding_when_the_cache_will_not_fit(tmp_path, monkeypatch):
    """Show-and-Tell's cache holds pooled rows (1 x 1280 fp16 = 2,560 bytes for Lite0); cached rows need no space."""
    import numpy as np

    from core.nn.features import FeatureCache, file_identity
    from core.train.trainer import _features

    paths = [make_image(tmp_path / "img" / f"{k}.png", "red", "square", seed=k) for k in range(5)]
    cfg = tiny_train_config(tmp_path, tmp_path, backbone="efficientnet_lite0").resolved()
    cache = FeatureCache(Path(cfg.cache_dir), "efficientnet_lite0", "pooled", (7, 7))
    assert cache.row_shape == (1, 1280) and cache.row_bytes == 2560
    cache.append([file_identity(p) for p in paths[:2]], np.zeros((2, 1, 1280)), {})
    free = (1 << 30) + 3 * 2560 - 1  # one byte short of 3 new rows + the margin
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda p: Usage(10 ** 12, 0, free))
    Items = namedtuple("Items", "path")
    with pytest.raises(diskspace.DiskSpaceError, match=r"\(pooled layout\): 3 images x 2,560 bytes = 7.7 kB"):
        _features(cfg, None, [Items(p) for p in paths], "cpu", lambda *a, **k: None, lambda: False)
    monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda p: Usage(10 ** 12, 0, free + 1))
    assert diskspace.check_cache_fits(cache, paths) == 3 * 2560
