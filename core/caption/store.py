"""The Caption page's tables on disk, so that a reload, a closed tab or a restarted server loses nothing.

    <runs>/captions/<session>/<table>/
        rows.jsonl    the CaptionResults, a line each, appended per chunk (a torn last line is never read)
        meta.json     the models that made them, the images asked for, the folder's settings
        edits.json    the user's captions, by image name: rewritten when they change
        pictures/     <k>.jpg (a preview for the close-up view) and <k>.thumb.jpg (the table's thumbnail)

A session is what one browser tab works on; its id travels in the page's URL (`?session=...`), so a reload
comes back to it. A table is "uploads" (every batch of the session, one after another) or a folder's review
("folder-<hash of the folder>"), whose rows also sit in its review CSV (core.caption.library's journal, the run's
record, which a resumed run skips by). Every file is written atomically: a reader never sees half of one.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.base.files import atomic_write_bytes, atomic_write_json, read_json_lines
from core.base.paths import runs_dir
from core.caption.result import CaptionResult

VERSION = 1
UPLOADS = "uploads"
_SESSION_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")  # the id comes from a URL: never a path of its own


def sessions_root() -> Path:
    return runs_dir() / "captions"


def new_session_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(4)


def valid_session_id(value) -> bool:
    return isinstance(value, str) and bool(_SESSION_ID.match(value))


def session_dir(session: str, root: Path | None = None) -> Path:
    if not valid_session_id(session):
        raise ValueError(f"not a session id: {session!r}")
    return (root or sessions_root()) / session


def folder_table(folder: str | Path) -> str:
    """The table name of a folder's review: stable for the folder, whatever characters its path holds."""
    return "folder-" + hashlib.sha1(str(Path(folder)).encode("utf-8")).hexdigest()[:12]


@dataclass
class TableData:
    results: list[CaptionResult] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)  # the user's edits, by image name
    thumbs: dict[str, Path] = field(default_factory=dict)  # thumbnail JPEG files
    pictures: dict[str, Path] = field(default_factory=dict)  # what the close-up view shows (a preview, or the photo)
    models: list[str] = field(default_factory=list)
    total: int = 0  # images asked for so far (a cancelled batch leaves fewer rows)
    meta: dict = field(default_factory=dict)  # what the page needs to go on (a folder's settings)


class Table:
    """One table of a session on disk."""

    def __init__(self, session: str, name: str, root: Path | None = None):
        if not re.fullmatch(r"[a-z0-9-]+", name):
            raise ValueError(f"not a table name: {name!r}")
        self.dir = session_dir(session, root) / name
        self.rows_path, self.meta_path, self.edits_path = (self.dir / "rows.jsonl", self.dir / "meta.json",
                                                           self.dir / "edits.json")

    def exists(self) -> bool:
        return self.meta_path.is_file()

    def meta(self) -> dict:
        """What set_meta saved (a folder's settings), without reading the rows."""
        return dict((_read_json(self.meta_path) or {}).get("meta", {}))

    def load(self, review_csv: Path | None = None) -> TableData:
        """The table as saved; with `review_csv`, its rows are the CSV's (rows.jsonl adds what the CSV lacks)."""
        meta = _read_json(self.meta_path) or {}
        data = TableData(models=list(meta.get("models", [])), total=int(meta.get("total", 0)),
                         meta=dict(meta.get("meta", {})))
        stored = {}
        for row in read_json_lines(self.rows_path):
            try:
                r = CaptionResult.from_json(row["result"])
            except (TypeError, ValueError, KeyError):
                continue  # a row of another format: left out rather than failing the page
            stored[r.image] = r
            if row.get("thumb"):
                data.thumbs[r.image] = self.dir / row["thumb"]
            if row.get("preview"):
                data.pictures[r.image] = self.dir / row["preview"]
            elif row.get("photo"):
                data.pictures[r.image] = Path(row["photo"])
        data.results = list(stored.values()) if review_csv is None else _merge_csv(review_csv, stored)
        edits = _read_json(self.edits_path) or {}
        data.captions = {k: v for k, v in edits.get("captions", {}).items() if isinstance(v, str)}
        data.total = max(data.total, len(data.results))
        return data

    def add(self, results: list[CaptionResult], thumbs: dict[str, bytes] | None = None,
            previews: dict[str, bytes] | None = None, photos: dict[str, str] | None = None,
            model: str | None = None, total: int | None = None) -> dict[str, tuple[Path | None, Path | None]]:
        """Append a chunk of rows (and their pictures: JPEG bytes by image name; `photos`: a folder's photo paths,
        which the close-up view reads itself). Returns name -> (preview path, thumbnail path) as written."""
        thumbs, previews, photos, written = thumbs or {}, previews or {}, photos or {}, {}
        _cut_torn_line(self.rows_path)
        start = len(read_json_lines(self.rows_path))
        lines = []
        for k, r in enumerate(results, start):
            row = {"result": r.to_json()}
            if r.image in previews:
                row["preview"] = f"pictures/{k}.jpg"
                atomic_write_bytes(self.dir / row["preview"], previews[r.image])
            elif r.image in photos:
                row["photo"] = photos[r.image]
            if r.image in thumbs:
                row["thumb"] = f"pictures/{k}.thumb.jpg"
                atomic_write_bytes(self.dir / row["thumb"], thumbs[r.image])
            written[r.image] = tuple(self.dir / row[key] if key in row else None for key in ("preview", "thumb"))
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.rows_path, "a", encoding="utf-8") as f:  # whole lines; a torn last line is never read
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        meta = _read_json(self.meta_path) or {}
        models = list(meta.get("models", []))
        if model and model not in models:
            models.append(model)
        self.set_meta(meta.get("meta", {}), total if total is not None else meta.get("total"), models)
        return written

    def set_meta(self, meta: dict, total: int | None = None, models: list[str] | None = None) -> None:
        """What the page needs to go on with the table (a folder's settings), and the images asked for so far."""
        old = _read_json(self.meta_path) or {}
        atomic_write_json(self.meta_path, {"version": VERSION, "meta": meta, "saved": time.time(),
                                           "total": old.get("total", 0) if total is None else total,
                                           "models": old.get("models", []) if models is None else models})

    def save_captions(self, captions: dict[str, str]) -> None:
        atomic_write_json(self.edits_path, {"version": VERSION, "captions": captions})

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def latest_session(root: Path | None = None) -> tuple[str, float] | None:
    """(id, time saved) of the session saved last, or None."""
    root = root or sessions_root()
    best = None
    for d in root.iterdir() if root.is_dir() else []:
        if not valid_session_id(d.name):
            continue
        times = [f.stat().st_mtime for f in d.glob("*/*.json")]
        if times and (best is None or max(times) > best[1]):
            best = (d.name, max(times))
    return best


# ------------------------------------------------------------------------------------------- the review CSV

def _parse_tags(text: str) -> list[tuple[str, float]]:
    """core.caption.tags.format_tags's "cat 0.96; dog 0.50" back into pairs."""
    out = []
    for part in (text or "").split(";"):
        noun, _, prob = part.strip().rpartition(" ")
        try:
            out.append((noun, float(prob)))
        except ValueError:
            continue
    return [t for t in out if t[0]]


def _float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_review_csv(path: Path) -> list[CaptionResult]:
    """The rows of a CSV core.caption.library wrote (or one a person edited in a spreadsheet), one result per image: the
    first row's caption, the image's other rows as alternatives. Formula-guarded names ("'=x.jpg") are unguarded."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig", errors="replace")
    except OSError:
        return []
    text = text if text.endswith("\n") else text[: text.rfind("\n") + 1]  # a half-written last line: not yet a row
    by_name: dict[str, CaptionResult] = {}
    for row in csv.DictReader(io.StringIO(text)):
        name = _unguard(row.get("image") or "")
        if not name:
            continue
        caption, score = _unguard(row.get("caption") or ""), _float(row.get("score"))
        if name in by_name:
            if caption:
                by_name[name].alternatives.append((caption, score or 0.0))
            continue
        by_name[name] = CaptionResult(
            name, caption, score, error=_unguard(row.get("error") or "") or None, tags=_parse_tags(row.get("tags")),
            confidence=_float(row.get("confidence")), check=bool((row.get("check") or "").strip()))
    return list(by_name.values())


def _unguard(cell: str) -> str:
    """A cell as it was before core.caption.library's spreadsheet-formula guard (a leading ' before = + - @)."""
    return cell[1:] if cell[:2] in ("'=", "'+", "'-", "'@", "'\t", "'\r") else cell


def _merge_csv(review_csv: Path, stored: dict[str, CaptionResult]) -> list[CaptionResult]:
    out = []
    for r in read_review_csv(review_csv):
        full = stored.get(r.image)
        if full is not None:  # the stored result has the alternatives and attention; the CSV is the record
            full.caption, full.error = r.caption, r.error
            out.append(full)
        else:
            out.append(r)
    return out


def _cut_torn_line(path: Path) -> None:
    """A line torn by a crash mid-write is cut off, so that the next line starts on a line of its own."""
    try:
        data = path.read_bytes()
    except OSError:
        return
    if data and not data.endswith(b"\n"):
        atomic_write_bytes(path, data[: data.rfind(b"\n") + 1])


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
