"""The README's Caption screenshots (docs/screenshots/caption*.png), retaken, with the real default model, through tests/test_browser.py's helpers.
Run: PYTHONPATH=.:tests .venv/bin/python docs/screenshots/take_caption_screenshots.py; the shots land in test-artifacts/.
"""
import os, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
sys.path.insert(0, "tests")
from playwright.sync_api import sync_playwright
import test_browser as tb

tmp = Path("/tmp/review_shots"); shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir()
lib = tmp / "holiday"; shutil.copytree("assets/samples", lib, ignore=shutil.ignore_patterns("*.md"))
port = tb.free_port()
env = {**os.environ, "CAPTION_RUNS_DIR": str(tmp / "runs"), "PYTHONUNBUFFERED": "1"}
proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                         "--server.headless", "true", "--browser.gatherUsageStats", "false"], env=env,
                        stdout=open(tmp / "log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
url = f"http://127.0.0.1:{port}"
for _ in range(180):
    try:
        if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok": break
    except OSError: time.sleep(0.5)
try:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=tb.CHROMIUM, args=tb.CHROMIUM_ARGS)
        page = b.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.set_default_timeout(180_000)
        page.goto(url + "/Caption")
        page.get_by_role("button", name="Try sample images").click()
        page.get_by_role("button", name="Download CSV").wait_for()
        tb.look_at(page, 3, "cat.jpg")
        tb.wait_idle(page)
        tb.shot(page, "docs-caption")
        page.goto(url + "/Caption")
        page.get_by_text("A folder on this computer").click()
        page.get_by_label("Folder of photos on this computer").fill(str(lib))
        page.keyboard.press("Enter")
        page.get_by_text("4 images found").wait_for()
        page.get_by_text("a .txt file beside each photo").click(); tb.wait_idle(page)
        page.get_by_text("the photo's own metadata (alt text)").click(); tb.wait_idle(page)
        page.get_by_role("button", name="Caption the folder").click()
        page.get_by_role("button", name="Write 4 captions").wait_for()
        try:
            tb.edit_caption(page, 3, "Chelsea the cat, close up")
        except AssertionError as e:
            print("EDIT FAILED", e)
        tb.look_at(page, 3, "cat.jpg")
        tb.wait_idle(page)
        tb.shot(page, "docs-caption-library")
        b.close()
finally:
    proc.terminate(); proc.wait(20)
