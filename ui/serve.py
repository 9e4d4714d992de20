"""Start the app: `python -m ui.serve [streamlit options]`, what the launchers and README's start command run.

`streamlit run app.py` runs no app code until a browser connects, so the model warm-up (ui.warm: start the caption
worker, which imports torch, loads the active model and captions one tiny image; about 3 s of CPU on a small machine)
would start only then, while the visitor waits. This starts the warm-up first and then Streamlit's own command line in
this same process, so the model loads while the server starts and the browser opens.
Options are those of `streamlit run app.py`, e.g. `python -m ui.serve --server.port 8502`.

The worker is a process of its own at a lower CPU priority, so it starts early on any machine. With the models in the
server's own process instead (CAPTION_WORKER=0), the early start is skipped on fewer than 4 CPU cores: measured on 2
cores (bench/bench_first_impression.py), torch's import then competed with the server and the browser for the same
cores and the same interpreter (Home 3.8 s instead of 1.6 s, 8.3 s instead of 7.7 s to the first caption), and the
first page starts the warm-up once Home is on its way. CAPTION_EARLY_WARMUP=1 or 0 overrides.

The server answers only requests addressed to a loopback name unless another address is configured (ui.hosts:
a page on a DNS-rebinding domain cannot drive the app's forms).
"""
from __future__ import annotations

import os
import runpy
import sys

from core.base.paths import EARLY_WARMUP_ENV

APP = "app.py"  # relative to the app folder, which the launchers change to first
EARLY_MIN_CPUS = 4  # without the worker, below this an early warm-up slows the first page more than it saves


def early_warm_up() -> bool:
    choice = os.environ.get(EARLY_WARMUP_ENV, "").strip()
    if choice in ("0", "1"):
        return choice == "1"
    from ui.warm import use_worker

    return use_worker() or (os.cpu_count() or 1) >= EARLY_MIN_CPUS


def main(argv: list[str] | None = None) -> None:
    try:
        if early_warm_up():
            from ui import warm

            warm.start()
    except Exception as e:  # never keep the app from starting: the pages load the model themselves if need be
        print(f"(the model warm-up did not start: {e})", file=sys.stderr)
    from ui import hosts

    if not hosts.install():  # DNS rebinding: only loopback Host headers are answered (ui/hosts.py says why)
        print("(warning: this Streamlit version has no hook for the Host check; requests under any host name are "
              "answered)", file=sys.stderr)
    sys.argv = [sys.argv[0], "run", APP, *(sys.argv[1:] if argv is None else argv)]
    # Streamlit's own entry point (`python -m streamlit`), on the main thread as its signal handlers need
    runpy.run_module("streamlit", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
