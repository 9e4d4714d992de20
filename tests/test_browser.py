"""End to end in a real browser: Debian's chromium driven by Playwright against `streamlit run app.py`.

Flow 1: upload three images (one corrupt) -> two captions and one error row -> download the CSV.
Flow 2: train on a tiny Flickr-style dataset (start it although the page warns that it is too small) -> progress
moves -> Stop -> Resume -> done -> its figures beside the active model's -> the new model captions an image on the
Caption page. Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import csv
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app_fixtures import jpeg_bytes, make_tiny_bundle
from conftest import make_flickr
from core.runs.folder import read_progress

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (./run_tests.sh installs it)")
pytestmark = [pytest.mark.browser, pytestmark]  # the other tests/test_browser_*.py import it, marks and all


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_attention_bundle):
    tmp = tmp_path_factory.mktemp("browser")
    models, runs = tmp / "models", tmp / "runs"
    shutil.copytree(tiny_attention_bundle, models / "tiny-attention")  # trained on colour squares (conftest.py)
    make_tiny_bundle(models / "tiny-random", decoder="show_tell")
    port = free_port()
    env = {**os.environ, "CAPTION_MODELS_DIR": str(models), "CAPTION_RUNS_DIR": str(runs),
           "CAPTION_CACHE_DIR": str(tmp / "features"), "PYTHONUNBUFFERED": "1",
           "CAPTION_PAGE_BATCH": "2"}  # the folder flow's Cancel (test_browser_library.py) lands half-way
    log = (tmp / "streamlit.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("streamlit did not start:\n" + (tmp / "streamlit.log").read_text())
        time.sleep(0.5)
    yield {"url": url, "tmp": tmp, "models": models, "runs": runs}
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    failed_before = request.session.testsfailed
    yield pg
    if request.session.testsfailed > failed_before:  # the call phase failed: keep what the browser showed
        shot(pg, f"FAILED-{request.node.name}")
    context.close()


def shot(page, name: str) -> None:
    """A screenshot of the whole page (Streamlit scrolls inside its own container, so grow the window first)."""
    ARTIFACTS.mkdir(exist_ok=True)
    size = page.viewport_size
    height = page.evaluate("() => Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
    page.set_viewport_size({"width": size["width"], "height": min(max(height, size["height"]), 6000)})
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.set_viewport_size(size)


def wait_idle(page, timeout: float = 120) -> None:
    """Until Streamlit has finished the current script run (its status widget says 'Running...')."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout * 1000)


def choose(page, label: str, option: str) -> None:
    """Pick an option of a st.selectbox by its label.

    A rerun that lands between the click and the pick (e.g. the page redrawing after a run ended) closes the
    list, so wait for the script to be idle, and open the list again if it closed."""
    for attempt in range(3):
        wait_idle(page)
        page.get_by_role("combobox", name=label, exact=True).click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=15_000)
            return
        except playwright_api.TimeoutError:
            page.keyboard.press("Escape")
    raise AssertionError(f"could not choose {option!r} in {label!r}")


def grid_row_text(page, row: int) -> str:
    """The text of a row of st.data_editor, read from the grid's accessible table (the cells are drawn on a canvas)."""
    return page.locator("[data-testid='stDataFrame'] [role='row']").nth(row).inner_text()


HEADER_PX, ROW_PX, CAPTION_X = 35, 72, 200  # the review table's header, rows (ui.review.ROW_HEIGHT), caption column


VIEW_X = 80 + 28  # the middle of the view column (after the 80-px thumbnail column)


def click_cell(page, row: int, grid_index: int = 0, x: int = CAPTION_X, double: bool = False) -> None:
    """Click a cell of a review-table row (row 1 = the first row under the header); the caption cell by default.
    Not the thumbnail: a click on a picture cell opens Streamlit's enlarged view of it. The button pressed last
    loses the focus first: a key meant for the grid must never press it."""
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    grid = page.locator("[data-testid='stDataFrame']").nth(grid_index)
    grid.scroll_into_view_if_needed()  # a mouse click lands only inside the window
    box = None
    for _ in range(20):  # until the layout has settled: a message drawn above the table moves it down a row
        page.wait_for_timeout(250)
        box, last = grid.bounding_box(), box
        if box == last:
            break
    at = (box["x"] + x, box["y"] + HEADER_PX + ROW_PX * (row - 1) + ROW_PX // 2)
    page.mouse.dblclick(*at) if double else page.mouse.click(*at)


# the page's main thread held up for `ms` right after the next letter typed into the cell editor, as on a loaded
# machine: the Enter that follows is then handled before the editor's timers of the letters typed
BUSY_AFTER_NEXT_LETTER = """ms => document.querySelector('textarea.gdg-input').addEventListener('input', () =>
    requestAnimationFrame(() => { const t = performance.now(); while (performance.now() - t < ms); }), {once: true})"""


def edit_caption(page, row: int, text: str, grid_index: int = 0, busy_ms: int = 0) -> None:
    """Edit the caption cell of a data_editor row as a user would: double-click, type, Enter.

    A double-click may be tried again when it opened no editor (the grid is drawn on a canvas: a click before its
    layout settles can miss), never once the text is typed and Enter pressed: an edit that a person typed and
    committed must land, and the row must say so. busy_ms: the browser is busy as the last letter is typed, which
    dropped about half such edits before ui.review.KEEP_TYPED_EDITS."""
    page.locator("[data-testid='stDataFrame'] [role='row']").nth(row).wait_for(state="attached")
    editor = page.locator("textarea.gdg-input")
    for _ in range(3):
        wait_idle(page)
        click_cell(page, row, grid_index, double=True)  # as the page's hint says
        try:
            editor.wait_for(timeout=10_000)
            break
        except playwright_api.TimeoutError:
            page.keyboard.press("Escape")
    else:
        raise AssertionError(f"double-clicking row {row} opened no editor")
    editor.first.focus()  # keys typed before the overlay editor has the focus would go nowhere
    page.keyboard.press("Control+A")
    page.keyboard.type(text[:-1])
    if busy_ms:
        page.evaluate(BUSY_AFTER_NEXT_LETTER, busy_ms)
    page.keyboard.type(text[-1])
    page.keyboard.press("Enter")
    try:
        page.wait_for_function(
            "([row, text]) => document.querySelectorAll(\"[data-testid='stDataFrame'] [role='row']\")[row]"
            "?.innerText.includes(text)", arg=[row, text], timeout=15_000)
    except playwright_api.TimeoutError:
        raise AssertionError(f"the edit of row {row} was lost: the row reads {grid_row_text(page, row)!r}") from None


def look_at(page, row: int, name: str, grid_index: int = 0) -> None:
    """Tick the view box of a row, as a user would (a click), until the up-close view shows `name`."""
    for _ in range(3):
        wait_idle(page)
        click_cell(page, row, grid_index, x=VIEW_X)
        try:
            page.locator("[data-testid='stMarkdownContainer'] strong", has_text=name).first.wait_for(timeout=10_000)
            return
        except playwright_api.TimeoutError:
            pass
    raise AssertionError(f"ticking row {row} did not show {name} up close")


def progress_value(page) -> float:
    return page.evaluate("""() => {
        const bar = document.querySelector("[data-testid='stProgress'] [role='progressbar']");
        return bar ? Number(bar.getAttribute("aria-valuenow")) : -1; }""")


def wait_for_progress(page, above: float, timeout: float = 120) -> float:
    deadline = time.time() + timeout
    while (value := progress_value(page)) <= above:
        assert time.time() < deadline, f"the progress bar stayed at {value} (wanted more than {above})"
        page.wait_for_timeout(250)
    return value


def test_caption_flow_upload_corrupt_and_download(server, page):
    page.goto(server["url"])
    page.get_by_text("Active model").wait_for()
    page.get_by_text("Train a model: start").wait_for()
    wait_idle(page)
    shot(page, "0-home")
    page.goto(server["url"] + "/Caption")
    page.get_by_text("Caption uploaded images").wait_for()
    files = [
        {"name": "red.jpg", "mimeType": "image/jpeg", "buffer": jpeg_bytes((220, 20, 20))},
        {"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"this is not a jpeg at all"},
        {"name": "blue.png", "mimeType": "image/png", "buffer": jpeg_bytes((20, 20, 220), fmt="PNG")},
    ]
    page.locator("[data-testid='stFileUploader'] input[type='file']").first.set_input_files(files)
    page.get_by_text("broken.jpg").first.wait_for()
    page.get_by_role("button", name="Caption uploaded images").click()
    page.get_by_role("button", name="Download CSV").wait_for()
    wait_idle(page)
    shot(page, "1-caption-results")

    edit_caption(page, row=1, text="a red square")
    wait_idle(page)
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text(encoding="utf-8-sig"))))
    assert [r["image"] for r in rows] == ["red.jpg", "broken.jpg", "blue.png"]
    assert rows[0]["caption"] == "a red square" and not rows[0]["error"]  # the edit is in the CSV
    assert rows[2]["caption"].split()[-1] in ("square", "stripe") and not rows[2]["error"]  # words it was taught
    assert rows[1]["caption"] == "" and rows[1]["error"]
    # the download did not rerun the page: the results and the edit are still there
    page.wait_for_timeout(500)
    assert page.get_by_role("button", name="Download CSV").is_visible()
    assert "a red square" in grid_row_text(page, 1)

    look_at(page, 2, "broken.jpg")  # the up-close view opens on the row ticked
    page.get_by_text("broken.jpg:").first.wait_for()
    look_at(page, 1, "red.jpg")
    page.get_by_text("Where the model looked").wait_for()  # the attention heat-maps of the tiny model
    wait_idle(page)
    shot(page, "2-caption-detail")

    page.reload()  # the URL holds the session: the table and the edit come back
    page.get_by_role("button", name="Download CSV").wait_for()
    page.locator("[data-testid='stDataFrame'] [role='row']").nth(3).wait_for(state="attached")
    assert "a red square" in grid_row_text(page, 1)


def fill_train_form(page, data: Path, epochs: int, name: str) -> None:
    # by role: each field's help button is labelled "Help for <the field's label>" too
    page.get_by_role("textbox", name="Dataset folder").fill(str(data))
    choose(page, "Decoder", "Show and Tell")
    choose(page, "Device", "cpu")
    for label, value in [("Embedding size", "16"), ("Hidden size", "16"), ("Vocabulary threshold", "1"),
                         ("Epochs", str(epochs)), ("Batch size", "2")]:
        page.get_by_role("spinbutton", name=label).fill(value)
    page.get_by_role("textbox", name="Model name").fill(name)


def start_anyway(page) -> None:
    """44 photos are far too few to learn captions: the page says so and asks before it starts."""
    page.get_by_text("is too little to learn to write captions").wait_for()
    page.get_by_role("button", name="Start anyway").click()


def epochs_lasting(run_dir: Path, seconds: float, steps_per_epoch: int) -> int:
    """How many epochs take about `seconds` at the speed a finished run had (this machine, under today's load)."""
    steps = [e for e in read_progress(run_dir) if e.get("event") == "step"]
    steps = steps[len(steps) // 2:] if len(steps) >= 4 else steps  # the steady pace: the first steps pay for warm-up (bf16 kernels, allocations)
    rate = (steps[-1]["step"] - steps[0]["step"]) / max(steps[-1]["time"] - steps[0]["time"], 1e-3)
    return int(min(200, max(8, seconds * rate / steps_per_epoch)))  # 200: the form's most


def test_train_flow_stop_resume_done_then_caption(server, page):
    # 42 training images, 2 captions each: 42 steps an epoch at batch 2, so that even 200 epochs (the form's most)
    # last long enough to watch on a fast machine (bf16 training of this tiny decoder runs ~100+ steps/s)
    data = make_flickr(server["tmp"] / "tiny-flickr", per_class=6, held_out=6)
    page.goto(server["url"] + "/Train")
    page.get_by_text("Start training").wait_for()
    # A quick first run: it must finish, and it shows how fast this machine trains right now.
    fill_train_form(page, data, epochs=4, name="tiny-quick")
    shot(page, "3-train-form")
    page.get_by_role("button", name="Start training").click()
    start_anyway(page)
    page.get_by_text("Finished. The model is saved as tiny-quick").wait_for(timeout=300_000)
    quick = next(server["runs"].glob("*-tiny-quick"))
    # The second run is sized to last about 45 s, so that it can be watched and stopped on a fast or a busy machine.
    epochs = epochs_lasting(quick, 45, steps_per_epoch=42)
    fill_train_form(page, data, epochs=epochs, name="tiny-trained")
    page.get_by_role("button", name="Start training").click()
    start_anyway(page)

    page.get_by_role("button", name="Stop").wait_for()
    page.get_by_text(re.compile(rf"epoch \d+/{epochs}, step")).wait_for(timeout=120_000)  # training now
    first = wait_for_progress(page, above=0)
    wait_for_progress(page, above=first)  # it moves while we watch
    shot(page, "4-train-running")
    page.reload()  # a reload (or another tab, or a restarted server) re-attaches to the running job
    page.get_by_role("button", name="Stop").wait_for()
    wait_for_progress(page, above=0)

    page.get_by_role("button", name="Stop").click()
    page.get_by_role("button", name="Resume").wait_for(timeout=120_000)
    page.get_by_text("Stopped. Resume continues from the last checkpoint.").wait_for()
    shot(page, "5-train-stopped")

    page.get_by_role("button", name="Resume").click()
    page.get_by_text("Finished. The model is saved as tiny-trained").wait_for(timeout=300_000)
    wait_idle(page)
    shot(page, "6-train-done")
    page.get_by_text("This run's model beside the active model").wait_for()  # both models' figures first
    if page.get_by_text("Use it anyway, although it scores lower").count():  # it may score below tiny-attention
        page.get_by_text("Use it anyway, although it scores lower").click()
        wait_idle(page)
    page.get_by_role("button", name="Use this model for captioning").click()
    page.get_by_text("is now the active model").wait_for()

    page.goto(server["url"] + "/Caption")
    page.get_by_role("button", name="Try sample images").wait_for()
    assert page.get_by_role("combobox", name="Model", exact=True).input_value() == "tiny-trained"  # the active one
    page.get_by_role("button", name="Try sample images").click()
    page.get_by_role("button", name="Download CSV").wait_for()
    page.get_by_text("Results (tiny-trained)").wait_for()
    wait_idle(page)
    shot(page, "7-caption-with-trained-model")
