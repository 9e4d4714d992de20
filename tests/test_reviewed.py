"""core/caption/reviewed.py and `python -m core.caption --from-csv`: reviewed captions written without captioning again."""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from PIL import Image

from core.caption import imagemeta
from core.caption.library import LibraryConfig
from core.caption.result import CaptionResult
from core.caption.reviewed import write_reviewed


def library(root: Path) -> Path:
    for name in ["a.jpg", "sub/b.png", "c.jpg"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 12), (200, 30, 30)).save(root / name)
    return root


def test_reviewed_text_goes_into_sidecars_metadata_and_jsonl(tmp_path):
    root = library(tmp_path / "lib")
    reviewed = [CaptionResult("a.jpg", "a red photo, checked", -1.2, [("a red thing", -2.0)]),
                CaptionResult("sub/b.png", "a red square", None),  # a row typed in a spreadsheet: no score
                CaptionResult("broken.gif", "", error="not an image"), CaptionResult("gone.jpg", "left the folder")]
    cfg = LibraryConfig(str(root), sidecar_ext=".txt", metadata=True, jsonl=True, csv=str(tmp_path / "out.csv"),
                        batch_size=1)
    seen = []
    progress, missing = write_reviewed(cfg, reviewed, on_progress=lambda p: seen.append(p.done))
    assert (progress.done, progress.skipped, progress.failed, missing) == (2, 0, 0, ["gone.jpg"]) and seen == [1, 2]
    assert (root / "a.txt").read_text(encoding="utf-8") == "a red photo, checked\n"
    assert imagemeta.read_caption(root / "a.jpg") == "a red photo, checked"
    assert imagemeta.read_caption(root / "sub" / "b.png") == "a red square"
    assert not (root / "c.txt").exists() and imagemeta.read_caption(root / "c.jpg") is None  # not reviewed: untouched
    assert '"text": "a red square"' in (root / "metadata.jsonl").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text(encoding="utf-8-sig"))))
    assert [(r["image"], r["caption"]) for r in rows] == [("a.jpg", "a red photo, checked"), ("sub/b.png", "a red square")]

    again = [CaptionResult("a.jpg", "a red photo, checked twice")]
    progress, _ = write_reviewed(cfg, again)  # skip: a photo that has its caption keeps it
    assert (progress.done, progress.skipped) == (0, 1) and imagemeta.read_caption(root / "a.jpg").endswith("checked")
    cfg.existing = "overwrite"
    progress, _ = write_reviewed(cfg, again)
    assert progress.done == 1 and imagemeta.read_caption(root / "a.jpg") == "a red photo, checked twice"
    assert (root / "a.txt").read_text(encoding="utf-8") == "a red photo, checked twice\n"


def test_cli_from_csv_writes_the_reviewed_csv_without_a_model(tmp_path, monkeypatch, capsys):
    from core.caption import cli as caption

    root = library(tmp_path / "lib")
    monkeypatch.chdir(tmp_path)
    reviewed = tmp_path / "captions.csv"  # as the first run wrote it, corrected in a spreadsheet
    reviewed.write_text("\ufeffimage,caption,score,alternatives,error,tags,confidence,check\n"
                        "a.jpg,sks, my own words,-1.0,,,,,\nc.jpg,,,,not an image,,,\n", encoding="utf-8")
    reviewed.write_text(reviewed.read_text(encoding="utf-8").replace("sks, my own words", '"sks, my own words"'),
                        encoding="utf-8")
    before = reviewed.read_bytes()
    monkeypatch.setitem(sys.modules, "core.nn.captioner", None)  # no model (nor torch) is loaded to write reviewed text
    code = caption.main([str(root), "--from-csv", str(reviewed), "--sidecar-ext", ".txt", "--metadata"])
    assert code == 0, capsys.readouterr().err
    assert (root / "a.txt").read_text(encoding="utf-8") == "sks, my own words\n"
    assert imagemeta.read_caption(root / "a.jpg") == "sks, my own words"
    assert not (root / "c.txt").exists() and not (root / "sub" / "b.txt").exists()
    assert reviewed.read_bytes() == before  # the reviewed CSV is the record; it is not written again
    assert "wrote the reviewed captions of 1 images" in capsys.readouterr().err

    assert caption.main([str(root), "--from-csv", str(tmp_path / "nope.csv"), "--sidecar-ext", ".txt"]) == 2
    assert "there is no file" in capsys.readouterr().err
    empty = tmp_path / "empty.csv"
    empty.write_text("name,text\nx,y\n", encoding="utf-8")
    assert caption.main([str(root), "--from-csv", str(empty), "--sidecar-ext", ".txt"]) == 2
    assert "holds no captions" in capsys.readouterr().err
