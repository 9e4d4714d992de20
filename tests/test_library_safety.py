"""Captioning a folder never harms a person's photos or files (issue 20): their descriptions, their CSVs, their
file modes and names, photos changed mid-run, collisions, interrupted overwrite/append runs, a full disk."""
from __future__ import annotations

import csv
import errno
import json
import os

import pytest

from conftest import make_image
from core.caption import imagemeta
from core.nn.captioner import Captioner
from core.caption.cli import main
from core.caption.library import LibraryConfig, LibraryError, caption_library


@pytest.fixture(scope="module")
def captioner(tiny_bundle):
    return Captioner(tiny_bundle, device="cpu")


def read_csv(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def test_skip_keeps_the_description_a_person_wrote_in_any_field(captioner, tmp_path):
    from test_imagemeta import PERSON, with_person_text

    root = tmp_path / "lib"
    root.mkdir()
    photos = {where: with_person_text(root / f"{where}{'.png' if where.startswith('png') else '.jpg'}", where)
              for where in ("xmp-pt", "alt-text", "exif", "iptc", "png-description")}
    make_image(root / "plain.png", "red", "square")
    before = {p: p.read_bytes() for p in photos.values()}
    out = tmp_path / "out.csv"
    pr = caption_library(LibraryConfig(str(root), csv=str(out), metadata=True), captioner)
    assert {p: p.read_bytes() for p in photos.values()} == before  # not one byte of a person's photo changed
    assert pr.kept == 5 and pr.done == 6  # every photo still gets its CSV row
    assert imagemeta.read_caption(root / "plain.png") == "a red square"

    pr = caption_library(LibraryConfig(str(root), metadata=True, existing="overwrite"), captioner)
    for where, p in photos.items():
        assert imagemeta.read_caption(p) != PERSON
        assert PERSON in str(imagemeta._read(imagemeta._open(p.read_bytes()))[1]), where  # kept in capt:Previous*


def test_trigger_words_go_to_training_sidecars_not_into_xmp_sidecars(captioner, tmp_path):
    root = tmp_path / "lib"
    photo = make_image(root / "r.jpg", "red", "square")
    before = photo.read_bytes()
    cfg = LibraryConfig(str(root), sidecar_ext=".txt", xmp_sidecar=True, prefix="sks, ")
    assert caption_library(cfg, captioner).done == 1
    assert photo.read_bytes() == before  # the photo is not touched
    assert (root / "r.txt").read_text(encoding="utf-8") == "sks, a red square\n"
    assert imagemeta.read_xmp_sidecar(photo) == {"ours": "a red square"} and (root / "r.jpg.xmp").exists()
    assert caption_library(cfg, captioner).done == 0  # skip: both done


def test_sidecars_and_csvs_get_the_umask_mode(captioner, tmp_path):
    root = tmp_path / "lib"
    make_image(root / "r.png", "red", "square")
    old = os.umask(0o022)
    try:
        caption_library(LibraryConfig(str(root), csv=str(tmp_path / "out.csv"), sidecar_ext=".txt", jsonl=True),
                        captioner)
    finally:
        os.umask(old)
    for p in (root / "r.txt", tmp_path / "out.csv", root / "metadata.jsonl"):
        assert os.stat(p).st_mode & 0o777 == 0o644, p


def test_a_read_only_photo_or_sidecar_gets_a_row_saying_so(captioner, tmp_path):
    root = tmp_path / "lib"
    photo = make_image(root / "r.jpg", "red", "square")
    os.chmod(photo, 0o444)
    before = photo.read_bytes()
    pr = caption_library(LibraryConfig(str(root), metadata=True, csv=str(tmp_path / "out.csv")), captioner)
    assert "write-protected" in pr.latest[0]["error"] and photo.read_bytes() == before
    side = root / "r.txt"
    side.write_text("my own caption\n", encoding="utf-8")
    os.chmod(side, 0o444)
    pr = caption_library(LibraryConfig(str(root), sidecar_ext=".txt", existing="overwrite"), captioner)
    assert "write-protected" in pr.latest[0]["error"] and side.read_text(encoding="utf-8") == "my own caption\n"


def test_a_link_into_a_system_folder_is_not_written_through(captioner, tmp_path, monkeypatch):
    from core.caption import library

    system = tmp_path / "system"
    target = make_image(system / "icon.png", "red", "square")
    monkeypatch.setattr(library, "_SYSTEM_TREES", library._SYSTEM_TREES + (str(system),))
    root = tmp_path / "lib"
    root.mkdir()
    (root / "icon.png").symlink_to(target)
    before = target.read_bytes()
    pr = caption_library(LibraryConfig(str(root), metadata=True), captioner)
    assert "system folder" in pr.latest[0]["error"] and target.read_bytes() == before


def test_images_sharing_a_sidecar_name_each_get_their_own(captioner, tmp_path):
    root = tmp_path / "lib"
    make_image(root / "a.jpg", "red", "square")
    make_image(root / "a.png", "blue", "stripe", seed=1)
    make_image(root / "b.jpg", "green", "square", seed=2)
    make_image(root / "b.JPG", "yellow", "square", seed=3)
    make_image(root / "c.png", "red", "square", seed=4)
    make_image(root / "a.jpg.png", "red", "square", seed=5)  # its a.jpg.txt would be a.jpg's
    cfg = LibraryConfig(str(root), sidecar_ext=".txt", csv=str(tmp_path / "out.csv"))
    assert caption_library(cfg, captioner).done == 6
    captions = {r["image"]: r["caption"] + "\n" for r in read_csv(tmp_path / "out.csv")}
    assert (root / "a.jpg.txt").read_text(encoding="utf-8") == captions["a.jpg"] == "a red square\n"
    assert (root / "a.png.txt").read_text(encoding="utf-8") == captions["a.png"] == "a blue stripe\n"
    assert (root / "b.jpg.txt").read_text(encoding="utf-8") == captions["b.jpg"]
    assert (root / "b.JPG.txt").read_text(encoding="utf-8") == captions["b.JPG"]
    assert (root / "c.txt").read_text(encoding="utf-8") == "a red square\n"  # no collision: the usual name
    assert (root / "a.jpg.png.txt").read_text(encoding="utf-8") == captions["a.jpg.png"]
    assert not (root / "a.txt").exists() and not (root / "b.txt").exists()
    (root / "a.png.txt").unlink()
    assert caption_library(cfg, captioner).done == 1  # skip tells them apart: only the lost one again


def test_a_persons_files_are_read_never_repaired_or_reencoded(captioner, tmp_path):
    root = tmp_path / "lib"
    make_image(root / "r.png", "red", "square")
    # a person's metadata.jsonl (a Hugging Face dataset) whose last line has no final newline
    theirs = b'{"file_name": "old.png", "text": "my own words"}\n{"file_name": "other.png", "text": "mine too"}'
    (root / "metadata.jsonl").write_bytes(theirs)
    caption_library(LibraryConfig(str(root), jsonl=True), captioner)
    text = (root / "metadata.jsonl").read_bytes()
    assert text.startswith(theirs + b"\n") and b'"r.png"' in text  # their last line kept, ours after it

    annotations = tmp_path / "captions_val2017.json"  # a COCO annotation file given as the results file
    annotations.write_bytes(b'{"images": [], "annotations": [{"image_id": 1, "caption": "mine"}]}')
    with pytest.raises(LibraryError, match="left unchanged"):
        caption_library(LibraryConfig(str(root), coco_results=str(annotations)), captioner)
    assert annotations.read_bytes() == b'{"images": [], "annotations": [{"image_id": 1, "caption": "mine"}]}'

    # a CSV saved by Excel in cp1252, and one with other columns: refused, byte-identical
    for name, data in (("excel.csv", "image,caption\r\ncaf\xe9.jpg,a caf\xe9".encode("cp1252")),
                       ("other.csv", b"file,notes\nx.jpg,keep me")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(LibraryError, match="left unchanged"):
            caption_library(LibraryConfig(str(root), csv=str(path)), captioner)
        assert path.read_bytes() == data


class Swapping:
    """A captioner during whose run another program replaces one photo (after it was read, before it is written)."""

    def __init__(self, captioner, victim, replacement):
        self.captioner, self.victim, self.replacement = captioner, victim, replacement

    def iter_captions(self, items, **kw):
        for k, batch in enumerate(self.captioner.iter_captions(items, **kw)):
            if k == 0:
                os.replace(self.replacement, self.victim)
            yield batch


def test_a_photo_replaced_mid_run_does_not_get_the_old_photos_caption(captioner, tmp_path):
    root = tmp_path / "lib"
    for i in range(4):
        make_image(root / f"{i}.png", "red", "square", seed=i)
    blue = make_image(tmp_path / "blue.png", "blue", "stripe")
    cfg = LibraryConfig(str(root), csv=str(tmp_path / "out.csv"), sidecar_ext=".txt", metadata=True, batch_size=2)
    pr = caption_library(cfg, Swapping(captioner, root / "2.png", blue), should_stop=None)
    assert pr.done == 4
    assert not (root / "2.txt").exists() and imagemeta.read_caption(root / "2.png") is None
    assert "2.png" not in [r["image"] for r in read_csv(tmp_path / "out.csv")]
    assert "changed while it was being captioned" in pr.latest[0]["error"]
    pr = caption_library(cfg, captioner)  # the rerun captions the new photo
    assert pr.done == 1 and (root / "2.txt").read_text(encoding="utf-8") == "a blue stripe\n"


def test_a_name_that_is_not_utf8_gets_its_own_row(captioner, tmp_path):
    root = tmp_path / "lib"
    make_image(root / "ok.png", "red", "square")
    try:
        with open(os.path.join(os.fsencode(root), b"caf\xe9.png"), "wb") as f:
            f.write((root / "ok.png").read_bytes())
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "out.csv"
    cfg = LibraryConfig(str(root), csv=str(out), sidecar_ext=".txt", jsonl=True)
    pr = caption_library(cfg, captioner)
    assert (pr.done, pr.failed) == (2, 0)
    assert sorted(r["image"] for r in read_csv(out)) == ["caf\\xe9.png", "ok.png"]
    assert os.path.exists(os.path.join(os.fsencode(root), b"caf\xe9.txt"))
    assert caption_library(cfg, captioner).done == 0  # a rerun knows it is done


@pytest.mark.parametrize("where", ["/", "/usr", "/usr/share", "/etc"])
def test_system_folders_are_refused_as_places_to_write(where):
    for outputs in (dict(sidecar_ext=".txt"), dict(metadata=True), dict(jsonl=True), dict(xmp_sidecar=True)):
        with pytest.raises(ValueError, match="system folder"):
            LibraryConfig(where, **outputs)
    with pytest.raises(ValueError, match="system folder"):
        LibraryConfig("photos", csv=os.path.join(where, "captions.csv"))


def test_reading_a_system_folder_into_a_csv_elsewhere_is_allowed(tmp_path):
    LibraryConfig("/usr/share", csv=str(tmp_path / "out.csv"))


def stop_after(n):
    seen = []
    return (lambda p: seen.append(p.done)), (lambda: len(seen) >= n)


def test_an_interrupted_overwrite_keeps_the_old_rows_of_what_it_did_not_redo(captioner, tmp_path):
    root = tmp_path / "lib"
    for i in range(6):
        make_image(root / f"{i}.png", "red", "square", seed=i)
    out = tmp_path / "out.csv"
    caption_library(LibraryConfig(str(root), csv=str(out), jsonl=True), captioner)
    on, stop = stop_after(1)
    cfg = LibraryConfig(str(root), csv=str(out), jsonl=True, existing="overwrite", prefix="new ", batch_size=2)
    assert caption_library(cfg, captioner, on_progress=on, should_stop=stop).done == 2
    rows = read_csv(out)
    assert sorted(r["image"] for r in rows) == [f"{i}.png" for i in range(6)]  # one row each, none lost
    assert sum(r["caption"].startswith("new ") for r in rows) == 2
    lines = [json.loads(x) for x in (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(o["file_name"] for o in lines) == [f"{i}.png" for i in range(6)]


def test_an_interrupted_append_resumes_without_appending_twice(captioner, tmp_path):
    root = tmp_path / "lib"
    for i in range(6):
        make_image(root / f"{i}.png", "red", "square", seed=i)
    out = tmp_path / "out.csv"
    base = dict(csv=str(out), sidecar_ext=".txt", batch_size=2)
    caption_library(LibraryConfig(str(root), **base), captioner)
    on, stop = stop_after(1)
    cfg = LibraryConfig(str(root), existing="append", prefix="more ", **base)
    assert caption_library(cfg, captioner, on_progress=on, should_stop=stop).done == 2
    assert caption_library(cfg, captioner).done == 4  # the same command again: the rest, not all six
    names = [r["image"] for r in read_csv(out)]
    assert sorted(names) == sorted([f"{i}.png" for i in range(6)] * 2)
    assert all(len((root / f"{i}.txt").read_text(encoding="utf-8").splitlines()) == 2 for i in range(6))
    assert caption_library(cfg, captioner).done == 6  # that run finished: a new append adds again
    assert len(read_csv(out)) == 18


def test_an_append_killed_before_its_journal_was_synced_still_resumes(captioner, tmp_path):
    root = tmp_path / "lib"
    for i in range(4):
        make_image(root / f"{i}.png", "red", "square", seed=i)
    out = tmp_path / "out.csv"
    caption_library(LibraryConfig(str(root), csv=str(out)), captioner)
    on, stop = stop_after(1)
    cfg = LibraryConfig(str(root), csv=str(out), existing="append", batch_size=2)
    caption_library(cfg, captioner, on_progress=on, should_stop=stop)
    journal = tmp_path / ".out.csv.append-run"
    journal.write_text(journal.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")  # rows, no names
    assert caption_library(cfg, captioner).done == 2
    assert sorted(r["image"] for r in read_csv(out)) == sorted([f"{i}.png" for i in range(4)] * 2)


@pytest.mark.parametrize("where", ["fsync", "journal write"])
def test_a_full_disk_is_said_plainly(tiny_bundle, tmp_path, monkeypatch, capsys, where):
    from core.caption import library

    root = tmp_path / "lib"
    make_image(root / "r.png", "red", "square")

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "fsync":
        monkeypatch.setattr(os, "fsync", full)
    else:
        monkeypatch.setattr(library._Journal, "sync", full)
    rc = main([str(root), "--model", str(tiny_bundle), "--out", str(tmp_path / "out.csv"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "disk is full" in err and "Traceback" not in err
