"""Where things live: the project's folders and the environment variables that move them, read in one place.

No torch here (the pages import it to draw). Every folder is absolute: a default never depends on the
directory the app or the trainer happened to be started from.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # core/base/paths.py -> the repository

MODELS_ENV = "CAPTION_MODELS_DIR"  # model bundles (default: models/)
RUNS_ENV = "CAPTION_RUNS_DIR"  # training runs (default: runs/)
CACHE_ENV = "CAPTION_CACHE_DIR"  # the feature cache (default: .cache/features/)
JOB_LOCK_ENV = "CAPTION_JOB_LOCK"  # set by core.runs.jobs for the trainer it starts: the lock it holds for its life

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
