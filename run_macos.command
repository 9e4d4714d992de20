#!/usr/bin/env bash
# Starts the image-captioning app. Double-click it in the Finder on macOS, or run
# ./run_macos.command on Linux. Any arguments go on to Streamlit, for example:
#   ./run_macos.command --server.port 8502
#
# What it does, in order:
#   1. finds Python 3.10 or newer (python3, python3.14 ... python3.10, python);
#   2. creates a private environment in .venv (first start only);
#   3. installs requirements.txt into it, but only when that file changed since
#      the last install (tools/env_check.py keeps a hash of it inside .venv);
#      on Linux without an NVIDIA GPU (no nvidia-smi, no /proc/driver/nvidia) the
#      CPU build of PyTorch from PyTorch's own index first, about 4 GB smaller than
#      PyPI's, which carries CUDA (the standard build when that fails); with
#      CAPTION_TORCH_CUDA=1 and an NVIDIA GPU, its CUDA build for the driver instead
#      (Linux normally needs none: PyPI's has CUDA); macOS: PyPI's build (Apple GPU);
#   4. runs "python -m ui.serve" (Streamlit's "streamlit run app.py", with the model
#      loading in the background from the start) on 127.0.0.1 only, which opens your browser.
#
# Settings for special cases (normally you need none):
#   CAPTION_PYTHON=/path/to/python3   use this Python instead of searching for one
#   CAPTION_NO_BROWSER=1              do not open a browser (--server.headless true)
#   CAPTION_FORCE_CPU=1               never use the GPU (and install no CUDA build)
#   CAPTION_TORCH_CUDA=1              install PyTorch's CUDA build for this driver from its index
#   CAPTION_TORCH_INDEX=URL           a mirror of https://download.pytorch.org/whl (its cpu/, cu128/ ...)
#
# Written for the bash 3.2 that macOS ships: no bash 4 features.

# Keep a double-clicked window open until the user has read the message.
# Only when a person is there: tests and CI have no terminal on stdin.
wait_for_enter() {
  if [ -t 0 ]; then
    echo
    read -r -p "Press Enter to close this window. " _ || true
  fi
}

# fail "first line" "second line" ...: print the lines as an error, then stop.
fail() {
  echo >&2
  echo "ERROR: $1" >&2
  shift
  for line in "$@"; do
    echo "       $line" >&2
  done
  wait_for_enter
  exit 1
}

# 1. Work in the folder this file is in, wherever it was started from.
here="${BASH_SOURCE[0]%/*}"
if [ "$here" = "${BASH_SOURCE[0]}" ]; then
  here="."
fi
cd "$here" || fail "Could not open the folder $here."
for needed in app.py requirements.txt tools/env_check.py; do
  if [ ! -f "$needed" ]; then
    fail "$needed is missing next to this launcher (in $(pwd))." \
      "Keep run_macos.command in the app's folder, or download the app again."
  fi
done

# 2. Find Python 3.10 or newer.
if [ "${OSTYPE#darwin}" != "$OSTYPE" ]; then
  # A double-clicked window may lack the PATH of Homebrew or the python.org installer.
  PATH="$PATH:/opt/homebrew/bin:/usr/local/bin:/Library/Frameworks/Python.framework/Versions/Current/bin"
fi

PYTHON=""
if [ -n "${CAPTION_PYTHON:-}" ]; then
  if ! "$CAPTION_PYTHON" -c "" >/dev/null 2>&1; then
    fail "CAPTION_PYTHON is set to \"$CAPTION_PYTHON\", but that cannot be run." \
      "Set it to the full path of a Python 3.10 (or newer) program, or unset it."
  fi
  "$CAPTION_PYTHON" tools/env_check.py check-python >/dev/null 2>&1 || {
    "$CAPTION_PYTHON" tools/env_check.py check-python
    fail "CAPTION_PYTHON (\"$CAPTION_PYTHON\") is too old." \
      "Set it to a Python 3.10 (or newer) program, or unset it."
  }
  PYTHON="$CAPTION_PYTHON"
else
  too_old=""
  for candidate in python3 python3.14 python3.13 python3.12 python3.11 python3.10 python; do
    if command -v "$candidate" >/dev/null 2>&1; then
      if "$candidate" tools/env_check.py check-python >/dev/null 2>&1; then
        PYTHON="$candidate"
        break
      fi
      if [ -z "$too_old" ]; then
        too_old="$candidate"
      fi
    fi
  done
  if [ -z "$PYTHON" ]; then
    if [ -n "$too_old" ]; then
      "$too_old" tools/env_check.py check-python 2>&1
    fi
    fail "Python 3.10 or newer was not found on this computer." \
      "Install it, then start this launcher again:" \
      "  macOS: the installer from https://www.python.org/downloads/ (or: brew install python)" \
      "  Linux: your package manager, e.g. sudo apt install python3 python3-venv" \
      "Already installed somewhere else? Start the launcher with" \
      "  CAPTION_PYTHON=/full/path/to/python3 ./run_macos.command"
  fi
fi
"$PYTHON" tools/env_check.py check-python

# 3. The private environment in .venv, made once.
VENV_PYTHON=".venv/bin/python"
if [ -d .venv ] && ! "$VENV_PYTHON" -c "" >/dev/null 2>&1; then
  # Its Python was removed or upgraded (e.g. by Homebrew), or the folder was copied from another computer.
  echo "The .venv folder does not work any more; making it again."
  "$PYTHON" -m venv --clear .venv || fail "Could not remake the .venv folder." \
    "Delete the .venv folder by hand and start this launcher again."
elif [ ! -d .venv ]; then
  echo "First start: making a private Python environment in .venv (only this once) ..."
  if ! "$PYTHON" -m venv .venv; then
    rm -rf .venv
    fail "Could not create the .venv folder with $PYTHON." \
      "On Debian or Ubuntu install the venv module first: sudo apt install python3-venv" \
      "Also check that this folder is not read-only and the disk is not full."
  fi
fi

# 4. Install requirements.txt when it is new or changed.
"$VENV_PYTHON" tools/env_check.py needs-install
status=$?
if [ "$status" -eq 0 ]; then
  "$VENV_PYTHON" tools/env_check.py install-torch ||
    fail "Could not prepare the PyTorch install (see the message above)."
  echo "Installing the packages from requirements.txt. The first time this downloads up to"
  echo "a few gigabytes (PyTorch) and can take a while ..."
  "$VENV_PYTHON" -m pip install --disable-pip-version-check -r requirements.txt ||
    fail "Installing the packages failed (pip's messages above say why)." \
      "Check the internet connection and start this launcher again; it goes on where it stopped." \
      "If it keeps failing, delete the .venv folder and try once more."
  "$VENV_PYTHON" tools/env_check.py mark-installed ||
    fail "Could not note the finished install inside .venv (see the message above)."
elif [ "$status" -ne 1 ]; then
  fail "Could not check whether the packages are installed (see the message above)."
fi

# 5. Start the app. Arguments given to this launcher go on to Streamlit, after these.
# The safety settings of .streamlit/config.toml once more: they hold even where that file is not read.
streamlit_args=(--server.address 127.0.0.1 --server.enableXsrfProtection true --server.maxUploadSize 200
  --browser.gatherUsageStats false --server.showEmailPrompt false --client.toolbarMode minimal
  --client.showSidebarNavigation false)
if [ "${CAPTION_NO_BROWSER:-}" = "1" ]; then
  streamlit_args+=(--server.headless true)
fi
echo
echo "Starting the app. Your browser opens it in a moment; if not, open the URL shown below."
echo "To stop the app: press Ctrl+C in this window, or close the window."
echo
"$VENV_PYTHON" -m ui.serve "${streamlit_args[@]}" "$@"
status=$?
if [ "$status" -ne 0 ]; then
  fail "The app stopped with an error (exit code $status); the messages above say why."
fi
