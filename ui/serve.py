"""Start the app: `python -m ui.serve [streamlit options]`, what the launchers and README's start command run.

`streamlit run app.py` runs no app code until a browser connects, so the model warm-up (ui.warm: import torch,
load the active model, one tiny caption; several seconds on a small CPU) would start only then, while the
visitor waits. This starts the warm-up thread first and then Streamlit's own command line in this same process
(the pages find the loaded model in ui.warm), so the model loads while the server starts and the browser opens.
Options are those of `streamlit run app.py`, e.g. `python -m ui.serve --server.port 8502`.
"""
from __future__ import annotations

import runpy
import sys

APP = "app.py"  # relative to the app folder, which the launchers change to first


def main(argv: list[str] | None = None) -> None:
    try:
        from ui import warm

        warm.start()
    except Exception as e:  # never keep the app from starting: the pages load the model themselves if need be
        print(f"(the model warm-up did not start: {e})", file=sys.stderr)
    sys.argv = [sys.argv[0], "run", APP, *(sys.argv[1:] if argv is None else argv)]
    # Streamlit's own entry point (`python -m streamlit`), on the main thread as its signal handlers need
    runpy.run_module("streamlit", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
