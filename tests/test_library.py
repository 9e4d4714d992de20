"""Captioning a folder: every output format, skip/overwrite/append, resuming after a killed run, prefix/suffix, K captions."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, make_coco, make_image
from core.base.config import DecodeOptions
from core.caption import imagemeta
from core.nn.captioner import Captioner
from core.caption.library import LibraryConfig, caption_library


@pytest.fixture(scope="module")
def captioner(tiny_bundle):
    return Captioner(tiny_bundle, device="cpu")


def library(root, n=4):
    """red/blue squares and stripes in root/ and root/sub/, a broken file and a non-image."""
    kinds = [("red", "square"), ("blue", "stripe"), ("yellow", "square"), ("green", "stripe")]
    for i in range(n):
        c, s = kinds[i % 4]
        make_image(root / ("sub" if i % 2 else "") / f"{c}_{s}_{i}.png", c, s, seed=i)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def read_csv(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def test_every_output_format(captioner, tmp_path):
    root = library(tmp_path / "lib")
    cfg = LibraryConfig(str(root), csv=str(tmp_path / "out.csv"), sidecar_ext=".txt", jsonl=True,
                        metadata=True, prefix="sks, ", suffix=".")
    before = {p: np.asarray(Image.open(p).convert("RGB")).copy() for p in root.rglob("*.png")}
    pr = caption_library(cfg, captioner)
    assert (pr.done, pr.total, pr.skipped, pr.failed) == (5, 5, 0, 1)
    rows = read_csv(tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert [r["image"] for r in rows] == ["broken.jpg", "red_square_0.png", "sub/blue_stripe_1.png",
                                          "sub/green_stripe_3.png", "yellow_square_2.png"]
    assert rows[0]["error"] and not rows[0]["caption"]
    assert rows[1]["caption"] == "sks, a red square." and rows[2]["caption"] == "sks, a blue stripe."
    assert (root / "sub" / "blue_stripe_1.txt").read_text(encoding="utf-8") == "sks, a blue stripe.\n"
    assert not (root / "broken.txt").exists()
    lines = [json.loads(x) for x in (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {"file_name": "yellow_square_2.png", "text": "sks, a yellow square."} in lines and len(lines) == 4
    for p, pix in before.items():
        colour, shape, _ = p.stem.split("_")
        assert imagemeta.read_caption(p) == f"a {colour} {shape}"  # the trigger word is for trainers, not alt text
        assert (np.asarray(Image.open(p).convert("RGB")) == pix).all()  # the pixels are untouched


def test_a_linked_photo_is_named_by_its_place_in_the_library(captioner, tmp_path):
    outside = make_image(tmp_path / "elsewhere" / "real.png", "red", "square")
    root = tmp_path / "lib"
    root.mkdir()
    (root / "link.png").symlink_to(outside)
    out = tmp_path / "out.csv"
    caption_library(LibraryConfig(str(root), csv=str(out)), captioner)
    assert [(r["image"], r["caption"]) for r in read_csv(out)] == [("link.png", "a red square")]


def test_coco_results_use_the_annotation_ids(captioner, tmp_path):
    coco = make_coco(tmp_path / "coco", split="val")
    ann = coco / "annotations" / "captions_val2017.json"
    data = json.loads(ann.read_text())
    for im in data["images"]:
        im["id"] += 1000  # ids that differ from the file names
    ann.write_text(json.dumps(data))
    out = tmp_path / "results.json"
    caption_library(LibraryConfig(str(coco / "images" / "val2017"), coco_results=str(out)), captioner)
    results = json.loads(out.read_text())
    assert sorted(r["image_id"] for r in results) == [1000, 1001, 1002, 1003]
    assert {r["image_id"]: r["caption"] for r in results}[1000] == "a red square"


def test_skip_overwrite_append(captioner, tmp_path):
    root = library(tmp_path / "lib", n=2)
    out = tmp_path / "out.csv"
    base = dict(csv=str(out), sidecar_ext=".txt")
    assert caption_library(LibraryConfig(str(root), **base), captioner).done == 3
    again = caption_library(LibraryConfig(str(root), **base), captioner)
    assert (again.done, again.skipped) == (0, 3)  # skip: nothing to do
    (root / "red_square_0.txt").unlink()  # one output lost: only that image is captioned again, only there
    again = caption_library(LibraryConfig(str(root), **base), captioner)
    assert again.done == 1 and len(read_csv(out)) == 3 and (root / "red_square_0.txt").exists()

    caption_library(LibraryConfig(str(root), existing="overwrite", prefix="new ", **base), captioner)
    rows = read_csv(out)
    assert len(rows) == 3 and rows[1]["caption"] == "new a red square"
    assert (root / "red_square_0.txt").read_text(encoding="utf-8") == "new a red square\n"

    caption_library(LibraryConfig(str(root), existing="append", prefix="more ", **base), captioner)
    assert len(read_csv(out)) == 6
    assert (root / "red_square_0.txt").read_text(encoding="utf-8") == "new a red square\nmore a red square\n"


def test_k_captions_in_every_output(captioner, tmp_path):
    root = tmp_path / "lib"
    make_image(root / "r.png", "red", "square")
    out = tmp_path / "out.csv"
    caption_library(LibraryConfig(str(root), csv=str(out), sidecar_ext=".caption", jsonl=True,
                                  decode=DecodeOptions(num_captions=3)), captioner)
    rows = read_csv(out)
    assert [r["image"] for r in rows] == ["r.png"] * 3 and rows[0]["caption"] == "a red square"
    assert len({r["caption"] for r in rows}) == 3
    assert (root / "r.caption").read_text(encoding="utf-8").splitlines() == [r["caption"] for r in rows]
    line = json.loads((root / "metadata.jsonl").read_text(encoding="utf-8"))
    assert line["text"] == "a red square" and line["texts"] == [r["caption"] for r in rows]


def test_a_half_written_csv_row_is_dropped_and_redone(captioner, tmp_path):
    root = library(tmp_path / "lib", n=2)
    out = tmp_path / "out.csv"
    caption_library(LibraryConfig(str(root), csv=str(out)), captioner)
    text = out.read_text(encoding="utf-8-sig")
    out.write_text("\ufeff" + text[: text.rindex("sub/blue") + 8], encoding="utf-8")  # a crash mid-row
    pr = caption_library(LibraryConfig(str(root), csv=str(out)), captioner)
    assert pr.done == 1
    rows = read_csv(out)
    assert [r["image"] for r in rows] == ["broken.jpg", "red_square_0.png", "sub/blue_stripe_1.png"]
    assert rows[2]["caption"] == "a blue stripe"


def test_names_that_look_like_formulas_are_recognised_on_a_rerun(captioner, tmp_path):
    """The CSV guards cells starting with = + - @ against spreadsheet formulas ('=x.png); a rerun still knows
    those images (and an unreadable one) are done, and "overwrite" replaces their rows."""
    root = tmp_path / "lib"
    for i, name in enumerate(["=sum.png", "+plus.png", "-minus.png", "@at.png", "plain.png", "=dir/x.png"]):
        make_image(root / name, "red", "square", seed=i)
    (root / "=broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out.csv"
    assert caption_library(LibraryConfig(str(root), csv=str(out)), captioner).done == 7
    names = [r["image"] for r in read_csv(out)]
    assert "'=sum.png" in names and "'=dir/x.png" in names and "plain.png" in names  # still guarded
    again = caption_library(LibraryConfig(str(root), csv=str(out)), captioner)
    assert (again.done, again.skipped) == (0, 7)
    over = caption_library(LibraryConfig(str(root), csv=str(out), existing="overwrite", prefix="new "), captioner)
    rows = read_csv(out)
    assert over.done == 7 and sorted(r["image"] for r in rows) == sorted(names)
    assert all(r["caption"].startswith("new ") for r in rows if not r["error"])


def test_stop_after_a_batch_keeps_what_is_written(captioner, tmp_path):
    root = tmp_path / "lib"
    for i in range(10):
        make_image(root / f"{i:02d}.png", "blue", "square", seed=i)
    out = tmp_path / "out.csv"
    seen = []
    pr = caption_library(LibraryConfig(str(root), csv=str(out), batch_size=2), captioner,
                         on_progress=lambda p: seen.append(p.done), should_stop=lambda: len(seen) == 2)
    assert pr.done == 4 and len(read_csv(out)) == 4
    pr = caption_library(LibraryConfig(str(root), csv=str(out), batch_size=2), captioner)
    assert (pr.done, pr.skipped) == (6, 4) and len(read_csv(out)) == 10


@pytest.mark.slow
def test_killed_command_line_run_resumes_and_captions_each_file_once(tiny_bundle, tmp_path):
    root = tmp_path / "lib"
    n = 60
    for i in range(n):
        make_image(root / f"d{i // 20}" / f"{i:03d}.png", ["red", "blue", "green"][i % 3], "square", seed=i)
    out = tmp_path / "out.csv"
    cmd = [sys.executable, "-m", "core.caption", str(root), "--model", str(tiny_bundle), "--out", str(out),
           "--sidecar-ext", ".txt", "--jsonl", "--batch-size", "2", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (out.exists() and len(out.read_bytes().splitlines()) > 6):  # some rows written, far from all
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode() if proc.poll() else "slow"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: a crash or a closed laptop
    proc.wait()
    written = len(read_csv(out))
    assert 0 < written < n
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "already done" in done.stderr
    names = [r["image"] for r in read_csv(out)]
    assert sorted(names) == sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))  # each exactly once
    assert all(r["caption"].endswith("square") for r in read_csv(out))
    jsonl = [json.loads(x)["file_name"] for x in (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(jsonl) == sorted(names)
    assert len(list(root.rglob("*.txt"))) == n


def test_bad_configs_say_why():
    with pytest.raises(ValueError, match="at least one output"):
        LibraryConfig("x")
    with pytest.raises(ValueError, match="overwrite images"):
        LibraryConfig("x", sidecar_ext="jpg")
    with pytest.raises(ValueError, match="skip, overwrite, append"):
        LibraryConfig("x", csv="a.csv", existing="sometimes")


def test_an_append_runs_id_did_not_change_when_the_decoding_options_moved_into_decode_options():
    """Regression (issue 22): an unfinished "append" run resumes only if the same command gives the same run id;
    the id hashes the decoding options by their old flat names, so one started before LibraryConfig.decode still
    resumes. The values were computed by the version before."""
    base = dict(csv="/tmp/x.csv", existing="append", prefix="sks, ")
    assert LibraryConfig("/tmp/photos", **base).append_run_id() == "0abfbeca78c8f9c0"
    chosen = DecodeOptions(num_captions=2, top_p=0.9, min_len=3, beam=5, max_len=12, object_words=False)
    assert LibraryConfig("/tmp/photos", decode=chosen, **base).append_run_id() == "a4cc98c46d9a6adf"


def test_a_caption_holding_a_line_separator_is_not_captioned_again(captioner, tmp_path):
    """metadata.jsonl is written with ensure_ascii=False: a caption may hold U+2028 (here through the suffix) as it
    is. Read back with str.splitlines, that line broke in two, the photo looked uncaptioned and was captioned again
    on every run."""
    root = library(tmp_path / "lib")
    cfg = LibraryConfig(str(root), jsonl=True, suffix="\u2028(checked)")
    first = caption_library(cfg, captioner)
    assert (first.done, first.failed) == (5, 1) and "\u2028" in (root / "metadata.jsonl").read_text(encoding="utf-8")
    again = caption_library(cfg, captioner)
    assert again.skipped == 4  # the four photos; the broken file has no line to skip it by
