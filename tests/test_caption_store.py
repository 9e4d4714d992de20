"""core/caption/store.py: a session's tables on disk: rows added chunk by chunk, edits, pictures, a torn line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.caption import store as caption_store
from core.caption.store import Table, read_review_csv
from core.caption.library import LibraryConfig, Progress, caption_library
from core.caption.result import CaptionResult


def test_rows_edits_and_pictures_come_back(tmp_path):
    sid = caption_store.new_session_id()
    table = Table(sid, "uploads", root=tmp_path)
    assert not table.exists()
    att = np.full((2, 3, 3), 0.5, np.float32)
    first = [CaptionResult("cat.jpg", "a cat", -0.5, [("a dog", -1.0)], words=["a", "cat"], attention=att,
                           tags=[("cat", 0.96)], confidence=0.8),
             CaptionResult("bad.jpg", error="not an image")]
    written = table.add(first, thumbs={"cat.jpg": b"thumb"}, previews={"cat.jpg": b"preview"}, model="m1", total=3)
    assert written["cat.jpg"][0].read_bytes() == b"preview" and written["bad.jpg"] == (None, None)
    table.add([CaptionResult("cat (2).jpg", "a cat again", -0.7)], photos={"cat (2).jpg": "/photos/cat.jpg"},
              model="m2", total=3)
    table.save_captions({"cat.jpg": "my cat"})

    data = Table(sid, "uploads", root=tmp_path).load()  # as a reload reads it
    assert [r.image for r in data.results] == ["cat.jpg", "bad.jpg", "cat (2).jpg"]
    cat = data.results[0]
    assert cat.alternatives == [("a dog", -1.0)] and cat.tags == [("cat", 0.96)] and cat.confidence == 0.8
    assert np.allclose(cat.attention, att) and data.results[1].error == "not an image"
    assert data.captions == {"cat.jpg": "my cat"} and data.models == ["m1", "m2"] and data.total == 3
    assert data.thumbs["cat.jpg"].read_bytes() == b"thumb" and str(data.pictures["cat (2).jpg"]) == "/photos/cat.jpg"
    table.clear()
    assert not table.exists() and Table(sid, "uploads", root=tmp_path).load().results == []


def test_a_line_torn_by_a_crash_is_never_read_and_the_next_rows_are_kept(tmp_path):
    sid = caption_store.new_session_id()
    table = Table(sid, "uploads", root=tmp_path)
    table.add([CaptionResult("a.jpg", "one")])
    with open(table.rows_path, "a", encoding="utf-8") as f:
        f.write('{"result": {"image": "b.jpg", "capt')  # the process died here
    assert [r.image for r in table.load().results] == ["a.jpg"]
    table.add([CaptionResult("c.jpg", "three")])
    assert [r.image for r in table.load().results] == ["a.jpg", "c.jpg"]


def test_a_line_separator_in_a_caption_keeps_the_table(tmp_path):
    """Regression: rows are written with ensure_ascii=False, so U+2028 (or NEL) in a caption or a file name went
    into rows.jsonl as it is; the reader split lines there too, took the first piece for a torn line and stopped:
    a reload showed an empty table, and the next add numbered its pictures over the first ones."""
    table = Table(caption_store.new_session_id(), "uploads", root=tmp_path)
    table.add([CaptionResult("a\u2028b.jpg", "one\u2028two"), CaptionResult("c.jpg", "three\x85four")])
    table.add([CaptionResult("d.jpg", "five")], thumbs={"d.jpg": b"thumb"})
    data = table.load()
    assert [(r.image, r.caption) for r in data.results] == [
        ("a\u2028b.jpg", "one\u2028two"), ("c.jpg", "three\x85four"), ("d.jpg", "five")]
    assert data.thumbs["d.jpg"].name == "2.thumb.jpg"


def test_session_ids_from_a_url_are_never_paths(tmp_path):
    assert caption_store.valid_session_id(caption_store.new_session_id())
    for bad in ["../../etc", "", None, "20260101-000000-zz", "20260101-000000-0123abcd/.."]:
        assert not caption_store.valid_session_id(bad)
        with pytest.raises(ValueError):
            caption_store.session_dir(bad, tmp_path)
    with pytest.raises(ValueError):
        Table(caption_store.new_session_id(), "../x", root=tmp_path)


def test_latest_session_is_the_one_saved_last(tmp_path):
    assert caption_store.latest_session(tmp_path) is None
    old, new = "20260101-000000-00000001", "20260102-000000-00000002"
    Table(old, "uploads", root=tmp_path).add([CaptionResult("a.jpg", "x")])
    Table(new, "uploads", root=tmp_path).add([CaptionResult("b.jpg", "y")])
    import os

    os.utime(tmp_path / old / "uploads" / "meta.json", (2e9, 2e9))  # touched last
    assert caption_store.latest_session(tmp_path)[0] == old


class Fixed:
    """A captioner answering "a photo of <stem>" for every item."""

    def iter_captions(self, items, batch_size=128, **_):
        for i in range(0, len(items), batch_size):
            yield [CaptionResult(str(n), f"a photo of {n.rsplit('/', 1)[-1].split('.')[0]}", -0.5,
                                 [("=x", -1.0)], tags=[("cat", 0.5), ("tabby cat", 0.25)])
                   for n, _ in items[i:i + batch_size]]


def test_the_review_csv_of_a_library_run_reads_back(tmp_path):
    from PIL import Image

    (tmp_path / "lib" / "sub").mkdir(parents=True)
    for name in ["=a.png", "sub/b.png"]:
        Image.new("RGB", (8, 8)).save(tmp_path / "lib" / name)
    Image.new("RGB", (8, 8)).save(tmp_path / "lib" / "c.png")
    cfg = LibraryConfig(str(tmp_path / "lib"), csv=str(tmp_path / "review.csv"), prefix="sks, ")
    caption_library(cfg, Fixed())
    rows = read_review_csv(tmp_path / "review.csv")
    assert [r.image for r in rows] == ["=a.png", "c.png", "sub/b.png"]  # the formula guard undone
    assert rows[0].caption == "sks, a photo of =a" and rows[0].tags == [("cat", 0.5), ("tabby cat", 0.25)]
    assert rows[2].score == -0.5 and rows[2].caption == "sks, a photo of b" and rows[1].error is None
    table = Table(caption_store.new_session_id(), "folder-abc", root=tmp_path)
    table.set_meta({"root": str(tmp_path / "lib")})
    data = table.load(tmp_path / "review.csv")  # rows.jsonl holds none of them: the CSV's rows all the same
    assert [r.image for r in data.results] == ["=a.png", "c.png", "sub/b.png"]
