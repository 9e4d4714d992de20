"""In a real browser: caption a folder of 50 photos on this computer for review, Cancel half-way, continue, edit a
caption, write the reviewed captions into sidecars and the photos, download the CSV.

Uses the server and browser of tests/test_browser.py (Debian's chromium driven by Playwright).
"""
from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image

from core.caption import imagemeta
from test_browser import (browser, edit_caption, grid_row_text, page, pytestmark, server, shot,  # noqa: F401
                          wait_idle)

N = 50


def make_photos(folder: Path, n: int = N) -> Path:
    """Noisy colour photos, large enough (1600x1200) that a batch takes a moment to decode: time to press Cancel."""
    rng = np.random.default_rng(0)
    for i in range(n):
        base = np.array([(220, 30, 30), (30, 60, 220), (30, 180, 40)][i % 3], np.int16)
        arr = np.clip(base + rng.integers(-40, 40, (1200, 1600, 3)), 0, 255).astype(np.uint8)
        sub = folder / f"roll{i // 20}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(sub / f"photo_{i:02d}.jpg", quality=90)
    return folder


def wait_painted(locator, timeout: float = 20) -> None:
    """Until the element (a st.dataframe's canvas) shows something: its screenshot is not one flat colour."""
    deadline = time.time() + timeout
    while True:
        if locator.count():
            shot_ = Image.open(io.BytesIO(locator.first.screenshot(timeout=5_000))).convert("L")
            if np.asarray(shot_).std() > 10:
                return
        assert time.time() < deadline, "the table was never drawn"
        time.sleep(0.2)


def csv_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))


def test_caption_a_local_folder_review_cancel_resume_write(server, page):
    folder = make_photos(server["tmp"] / "library")
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*.jpg")}
    page.goto(server["url"] + "/Caption")
    page.get_by_text("A folder on this computer").click()
    page.get_by_label("Folder of photos on this computer").fill(str(folder))
    page.keyboard.press("Enter")
    page.get_by_text(f"{N} images found").wait_for()
    page.get_by_text("a .txt file beside each photo").click()
    wait_idle(page)
    page.get_by_text("the photo's own metadata (alt text)").click()
    page.get_by_text("Nothing is written into the photos or beside them yet").wait_for()
    wait_idle(page)
    page.get_by_role("button", name="Caption the folder").click()
    page.get_by_text(re.compile(r"Captioned \d+ of 50 · [\d.]+ images/s")).wait_for(timeout=120_000)
    page.get_by_role("button", name="Cancel").click()  # at once, so that it lands half-way however fast this machine
    page.get_by_text(re.compile(r"Cancelled after \d+ of 50 images")).wait_for(timeout=120_000)
    page.get_by_text("Review the captions, then write them").wait_for()
    table = page.locator("[data-testid='stDataFrame']")
    wait_painted(table)
    shot(page, "8-library-cancelled")
    done = int(re.search(r"after (\d+) of", page.get_by_text(re.compile("Cancelled after")).inner_text()).group(1))
    assert 0 < done < N
    assert page.get_by_role("button", name=f"Write {done} captions").is_visible()  # what was captioned is kept
    assert not list(folder.rglob("*.txt")) and not (folder / "captions.csv").exists()  # nothing written yet
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.jpg")} == before

    wait_idle(page)
    page.get_by_role("button", name="Caption the folder").click()  # continue: skip what is done
    page.get_by_text(f"Captioned {N - done} images for review").wait_for(timeout=180_000)
    page.get_by_text(f"{done} already had captions").wait_for()
    page.get_by_role("button", name=f"Write {N} captions").wait_for()
    # captions edited as a person would (double-click, type, Enter), then a find and replace over the rest; the second
    # typed while the browser is busy, which used to drop the edit without a word (ui.review.KEEP_TYPED_EDITS)
    edited = re.search(r"roll\d/photo_\d\d\.jpg", grid_row_text(page, 2)).group(0)
    busy = re.search(r"roll\d/photo_\d\d\.jpg", grid_row_text(page, 3)).group(0)
    shot(page, "9a-library-before-edit")
    edit_caption(page, row=2, text="a photo I typed myself")
    wait_idle(page)
    edit_caption(page, row=3, text="typed on a busy machine", busy_ms=300)
    wait_idle(page)
    shot(page, "9b-library-edited")
    assert "a photo I typed myself" in grid_row_text(page, 2)  # the edits stayed after the table's reruns
    assert "typed on a busy machine" in grid_row_text(page, 3)
    page.get_by_label("Find in captions").fill("a red square")
    page.keyboard.press("Enter")
    wait_idle(page)
    page.get_by_label("Replace with").fill("a red photo I checked")
    page.keyboard.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Replace all").click()
    wait_idle(page)
    page.wait_for_function(
        "() => document.querySelectorAll(\"[data-testid='stDataFrame'] [role='row']\")[1]"
        "?.innerText.includes('a red photo I checked')", timeout=30_000)
    assert "a photo I typed myself" in grid_row_text(page, 2)  # the edit outlives the replace
    shot(page, "9-library-review")
    wait_idle(page)
    page.get_by_role("button", name=f"Write {N} captions").click()
    page.get_by_text(f"Wrote {N} reviewed captions").wait_for(timeout=120_000)  # the person is told what was written
    wait_idle(page)
    assert page.get_by_text(f"Wrote {N} reviewed captions").is_visible()  # and it stays after the page settles
    first = folder / "roll0" / "photo_00"
    assert first.with_suffix(".txt").read_text(encoding="utf-8") == "a red photo I checked\n"
    assert imagemeta.read_caption(first.with_suffix(".jpg")) == "a red photo I checked"
    typed = folder / edited
    assert typed.with_suffix(".txt").read_text(encoding="utf-8") == "a photo I typed myself\n"
    assert imagemeta.read_caption(typed) == "a photo I typed myself"
    assert (folder / busy).with_suffix(".txt").read_text(encoding="utf-8") == "typed on a busy machine\n"
    assert imagemeta.read_caption(folder / busy) == "typed on a busy machine"
    assert len(list(folder.rglob("*.txt"))) == N
    assert all(imagemeta.read_caption(p) for p in folder.rglob("*.jpg"))
    shot(page, "10-library-written")
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download CSV").click()
    rows = csv_rows(Path(dl.value.path()))
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    assert sorted(r["image"] for r in rows) == names  # every photo exactly once
    assert all(r["caption"] and not r["error"] for r in rows) and rows[0]["caption"] == "a red photo I checked"
    assert next(r["caption"] for r in rows if r["image"] == edited) == "a photo I typed myself"
    assert next(r["caption"] for r in rows if r["image"] == busy) == "typed on a busy machine"

    page.reload()  # the review table, its edit and the form come back
    page.get_by_text("A folder on this computer").click()
    page.get_by_text("Review the captions, then write them").wait_for()
    page.locator("[data-testid='stDataFrame'] [role='row']").nth(1).wait_for(state="attached")
    assert "a red photo I checked" in grid_row_text(page, 1) and "a photo I typed myself" in grid_row_text(page, 2)


def test_upload_a_whole_folder(server, page):
    folder = server["tmp"] / "to-upload"
    for i, name in enumerate(["a.jpg", "trip/b.jpg", "trip/day2/c.jpg"]):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), [(220, 30, 30), (30, 60, 220), (30, 180, 40)][i]).save(folder / name)
    (folder / "notes.txt").write_text("not a photo")
    page.goto(server["url"] + "/Caption")
    page.get_by_text("Or a whole folder").wait_for()
    page.locator("[data-testid='stFileUploader'] input[webkitdirectory]").set_input_files(folder)
    page.get_by_text("c.jpg").first.wait_for()
    page.get_by_role("button", name="Caption uploaded images").click()
    page.get_by_role("button", name="Download CSV").wait_for()
    wait_idle(page)
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download CSV").click()
    rows = csv_rows(Path(dl.value.path()))
    # every file of the folder gets its row: the photos their captions, notes.txt a row saying it is no image
    assert sorted(r["image"].rsplit("/", 1)[-1] for r in rows) == ["a.jpg", "b.jpg", "c.jpg", "notes.txt"]
    photos = [r for r in rows if r["image"].endswith(".jpg")]
    assert all(r["caption"] and not r["error"] for r in photos)
    notes = next(r for r in rows if r["image"].endswith("notes.txt"))
    assert notes["error"] and not notes["caption"]
