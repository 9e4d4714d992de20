#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian/Ubuntu machine, then run them.
#   ./run_tests.sh                                the whole suite (unit, AppTest and real-browser tests)
#   ./run_tests.sh -k vocab                       any pytest arguments pass through
#   ./run_tests.sh -m "not browser"               all but the real-browser tests (the markers: pytest.ini)
#   ./run_tests.sh -m "not browser and not slow"  the quick loop: without the few long tests either
set -euo pipefail
cd "$(dirname "$0")"

# Debian's chromium drives the real-browser tests (Playwright's own browser download cannot work offline).
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
exec .venv/bin/python -m pytest "$@"
