"""Where things live: the project's folders and the environment variables that move them, read in one place; and
the name of every environment variable the app reads, declared in one table.

No torch here (the pages import it to draw). Every folder is absolute: a default never depends on the
directory the app or the trainer happened to be started from.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # core/base/paths.py -> the repository

# Every environment variable the app reads, by name. The folders' are read here; each other one is read where it acts,
# under its name from this table. (The launchers' shell scripts read CAPTION_PYTHON and CAPTION_NO_BROWSER themselves.)
MODELS_ENV = "CAPTION_MODELS_DIR"  # model bundles (default: models/)
RUNS_ENV = "CAPTION_RUNS_DIR"  # training runs (default: runs/)
CACHE_ENV = "CAPTION_CACHE_DIR"  # the feature cache (default: .cache/features/)
JOB_LOCK_ENV = "CAPTION_JOB_LOCK"  # set by core.runs.jobs for the trainer it starts: the lock it holds for its life
FORCE_CPU_ENV = "CAPTION_FORCE_CPU"  # "1": "auto" = CPU, and the launcher downloads no CUDA build
TORCH_CUDA_ENV = "CAPTION_TORCH_CUDA"  # "1": install the CUDA build from PyTorch's index on Linux too
TORCH_INDEX_ENV = "CAPTION_TORCH_INDEX"  # PyTorch's wheel index, or a mirror of it
WORKER_ENV = "CAPTION_WORKER"  # "0": the models in the server's own process, no caption worker
WORKER_NICE_ENV = "CAPTION_WORKER_NICE"  # the caption worker's nice value (0: the server's priority)
WORKER_STALL_ENV = "CAPTION_WORKER_STALL_S"  # seconds of silence after which the caption worker counts as stopped
EARLY_WARMUP_ENV = "CAPTION_EARLY_WARMUP"  # "1": warm up before the server starts; "0": leave it to the first page
ALLOWED_HOSTS_ENV = "CAPTION_ALLOWED_HOSTS"  # more Host names the server answers (comma-separated; "*": any)
PAGE_BATCH_ENV = "CAPTION_PAGE_BATCH"  # photos per batch of the Caption page's folder flow (default 16)
TEST_FAIL_AT_ENV = "CAPTION_TEST_FAIL_AT"  # tests only: "RANK:STEP" makes that rank of the trainer raise at that step

SAMPLES_DIR = REPO_ROOT / "assets" / "samples"
COCO_DIR = REPO_ROOT / "cocoapi"


def resolve(path: str | os.PathLike) -> Path:
    """A user's path as an absolute one: `~` expanded, relative to the current directory (form, CLI, trainer alike)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _from_env(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return resolve(value) if value else default


def models_dir() -> Path:
    return _from_env(MODELS_ENV, REPO_ROOT / "models")


def runs_dir() -> Path:
    return _from_env(RUNS_ENV, REPO_ROOT / "runs")


def cache_dir() -> Path:
    """Encoded image features, shared by every run on the same backbone and preprocessing."""
    return _from_env(CACHE_ENV, REPO_ROOT / ".cache" / "features")
