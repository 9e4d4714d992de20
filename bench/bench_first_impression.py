"""The first impression, measured in a real browser: from a cold server start to the Home page and the first captions.

    .venv/bin/python bench/bench_first_impression.py                     # this checkout
    .venv/bin/python bench/bench_first_impression.py --baseline 8fe4562  # and an older commit, in the same run
    .venv/bin/python bench/bench_first_impression.py --variant CAPTION_EARLY_WARMUP=1  # and with a setting changed
    .venv/bin/python bench/bench_first_impression.py --floor   # and Streamlit's own floor: a page of plain text

For each run: start the app as the launchers do, `python -m ui.serve` (`streamlit run app.py` for an older commit
without it; a fresh process: nothing imported, nothing cached), open Home in headless chromium (Playwright, as
tests/test_browser.py does), wait until its model section is drawn, go to the Caption page, press "Try sample
images" and wait for the results table. Prints seconds for each step, and where "Home drawn" goes: the browser
loading Streamlit's page (HTML and JavaScript, up to its load event) and then the app's script drawing Home (with
the element code Streamlit's page loads on demand: page links, metrics).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(repo: Path, browser, python: str, settings: dict[str, str] | None = None) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTION_")}
    env.update(settings or {})
    launched = time.perf_counter()
    start = ["-m", "ui.serve"] if (repo / "ui" / "serve.py").exists() else ["-m", "streamlit", "run", "app.py"]
    proc = subprocess.Popen([python, *start, "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"],
                            cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.05)
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit did not start in {repo}")
        t = {"server up": time.perf_counter() - launched}
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(120_000)
        opened = time.perf_counter()
        page.goto(url)  # returns at the page's load event: Streamlit's HTML and JavaScript are in
        loaded = time.perf_counter()
        page.get_by_text("Active model").wait_for()
        page.get_by_text("Train a model: start").wait_for()
        drawn = time.perf_counter()
        t["Home drawn (from opening it)"] = drawn - opened
        t["  browser loads Streamlit's page"] = loaded - opened
        t["  then the app draws Home"] = drawn - loaded
        t["launch to Home drawn"] = drawn - launched
        if not (repo / "pages").exists():  # the floor: a page of text, nothing to click
            context.close()
            return t
        page.get_by_role("link", name="Caption images").first.click()
        link = time.perf_counter()
        button = page.get_by_role("button", name="Try sample images")
        button.wait_for()
        page.wait_for_function("() => [...document.querySelectorAll('button')].some("
                               "b => b.innerText.includes('Try sample images') && !b.disabled)")
        clicked = time.perf_counter()
        t["Caption page drawn (from its link)"] = clicked - link
        button.click()
        page.get_by_role("button", name="Download CSV").wait_for()
        done = time.perf_counter()
        t["sample captions (from the click)"] = done - clicked
        t["launch to first caption"] = done - launched
        context.close()
        return t
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def checkout(commit: str, into: Path) -> Path:
    """The app at `commit`, unpacked with `git archive` (the user's checkout is not touched)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


# What Streamlit needs to draw the texts the benchmark waits for on Home, and nothing else: no menu, no model
FLOOR_APP = """import streamlit as st
st.title("Image captioning")
st.markdown("Train a model: start, watch, stop and resume a training run")
st.subheader("Active model")
"""


def floor_app(into: Path) -> Path:
    into.mkdir(parents=True)
    (into / "app.py").write_text(FLOOR_APP)
    shutil.copytree(REPO / ".streamlit", into / ".streamlit")  # the same settings as the app
    return into


def main() -> None:
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", help="also measure this git commit (e.g. 8fe4562)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=VALUE[,NAME=VALUE]",
                   help="also measure this checkout with these environment settings (repeatable), e.g. "
                        "CAPTION_EARLY_WARMUP=1")
    p.add_argument("--floor", action="store_true",
                   help="also measure Home for a Streamlit page of plain text: the part of 'Home drawn' that is "
                        "Streamlit's and the browser's own on this machine")
    p.add_argument("--repeat", type=int, default=2, help="cold starts per checkout (default 2)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-first-"))
    targets = [("this checkout", REPO, {})]
    for variant in args.variant:
        targets.append((variant, REPO, dict(setting.split("=", 1) for setting in variant.split(","))))
    if args.baseline:
        targets.insert(0, (f"commit {args.baseline}", checkout(args.baseline, tmp / "baseline"), {}))
    if args.floor:
        targets.append(("floor: plain text", floor_app(tmp / "floor"), {}))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            results = {}
            for _ in range(args.repeat):  # interleaved, so that both see the same load on a shared machine
                for name, repo, settings in targets:
                    results.setdefault(name, []).append(measure(repo, browser, sys.executable, settings))
            browser.close()
        print(f"cold starts, median of {args.repeat}; {os.cpu_count()} CPUs; seconds")
        keys = list(next(iter(results.values()))[0])
        print(f"{'':36}" + "".join(f"{name:>26}" for name in results))
        for k in keys:
            row = [sorted(r[k] for r in runs)[len(runs) // 2] if k in runs[0] else None for runs in results.values()]
            print(f"{k:36}" + "".join(f"{v:26.2f}" if v is not None else f"{'-':>26}" for v in row))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
