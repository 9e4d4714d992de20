"""Captioning a photo library on disk: find the images, caption what is not done yet, write each output as it goes.

Outputs (any combination): a CSV (one row per caption, grows row by row), a sidecar text file per image
(`photo.jpg` -> `photo.txt`, as kohya's sd-scripts and most training tools read them), `metadata.jsonl` in the
folder (`{"file_name", "text"}`, Hugging Face's `imagefolder` layout), a COCO results JSON (`[{"image_id",
"caption"}]`) and the caption inside the image file's metadata (core.caption.imagemeta). Every row names the image by
its path relative to the library folder, which is also how a rerun recognises what is already done:
`existing="skip"` (the default) captions only the images some output still lacks, so an interrupted run
(crash, Ctrl+C, Cancel on the page) continues where it stopped.

Under torchrun (`caption_library(..., team=...)`, see core.nn.captioner) rank 0 plans, every rank captions its share
(every world-th image of the plan) and writes its images' own files (sidecars, embedded metadata) directly and
its rows of the shared files (CSV, metadata.jsonl, COCO JSON) to parts beside them (`captions.csv.part-1`); after a
barrier rank 0 merges the parts into the shared files in input order, atomically, then deletes them. Parts left by
a killed run are merged first by the next run, so a resume skips what they hold.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from core.base.config import DecodeOptions
from core.base.files import (
    DiskFullError,
    atomic_write_bytes,
    atomic_write_json,
    plain_os_error,
)
from core.caption import imagemeta
from core.caption.tags import format_tags, tag_list
from core.data.images import IMAGE_EXTENSIONS, find_images

CSV_COLUMNS = ["image", "caption", "score", "alternatives", "error", "tags", "confidence", "check"]
_OLD_COLUMNS = 5  # CSVs written before tags/confidence/check: still read when a run resumes
EXISTING = ("skip", "overwrite", "append")
BOM = "\ufeff"  # spreadsheets on Windows read a CSV as UTF-8 only when it starts with one
PART = ".part-"  # <shared output>.part-<rank>: one rank's rows of a shared output under torchrun
MARK = ".captioner"  # .<output>.captioner beside a CSV / JSON Lines file: this program created it (and may repair it)
APPEND_RUN = ".append-run"  # .<output>.append-run: the images an unfinished "append" run has done
AHEAD = 3  # batches whose file identities are taken before the captioner reads them (it reads < 2 batches ahead)


class LibraryError(ValueError):
    """An output cannot be used safely; the message says why and what to do. Nothing was changed."""


# the system's own folders: photos there belong to the system, and outputs written there could break it
_SYSTEM_TREES = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/dev", "/proc",
                 "/sys", "/run", "/snap", "/System", "/Library", "/Applications", "/private/etc",
                 "/var/lib", "/var/cache", "/var/log", "/var/spool")
_SYSTEM_ROOTS = ("/home", "/Users", "/var", "/mnt", "/media", "/Volumes", "/opt", "/srv", "/root")  # only themselves


def system_folder(path: Path | str) -> str | None:
    """The system folder `path` is or lies in (`/`, `/usr/share`, `C:\\Windows`...), or None for a person's folder."""
    p = os.path.normcase(os.path.realpath(os.path.expanduser(str(path))))
    if os.path.dirname(p) == p:  # a file system's or drive's root
        return p
    trees = list(_SYSTEM_TREES) if os.name != "nt" else []
    trees += [sys.base_prefix, sys.prefix]  # the Python installation
    trees += [os.environ[v] for v in ("SystemRoot", "windir", "ProgramFiles", "ProgramFiles(x86)", "ProgramData")
              if os.environ.get(v)]
    for tree in trees:
        t = os.path.normcase(os.path.realpath(tree))
        if p == t or p.startswith(t.rstrip(os.sep) + os.sep):
            return tree
    roots = _SYSTEM_ROOTS if os.name != "nt" else ()
    return next((r for r in roots if p == os.path.normcase(os.path.realpath(r))), None)


@dataclass
class LibraryConfig:
    root: str  # the library folder; every image is named by its path relative to it
    recursive: bool = True
    include: list[str] = field(default_factory=list)  # glob patterns on the relative path or the file name
    exclude: list[str] = field(default_factory=list)
    csv: str | None = None  # CSV file path (relative paths are taken from the current folder)
    sidecar_ext: str | None = None  # e.g. ".txt": a text file beside each image
    jsonl: bool = False  # <root>/metadata.jsonl
    coco_results: str | None = None  # COCO results JSON path
    metadata: bool = False  # write into JPEG/PNG metadata
    existing: str = "skip"  # skip | overwrite | append
    prefix: str = ""  # added before every caption (a "trigger word" such as "sks, ")
    suffix: str = ""
    decode: DecodeOptions = field(default_factory=DecodeOptions)  # how captions are made; K = decode.num_captions
    batch_size: int = 128  # images per beam search and per progress step (core.nn.captioner encodes them 32 at a time)
    xmp_sidecar: bool = False  # write the caption into photo.jpg.xmp (or merge into photo.xmp), not the photo
    affix_metadata: bool = False  # prefix/suffix also into metadata and XMP (else only CSV, sidecars, JSON Lines, COCO)
    keep_mtime: bool = True  # a photo whose metadata is written keeps its modification time
    run_id: str | None = None  # names an "append" run so that rerunning it resumes it (default: from the settings)
    tags_ext: str | None = None  # e.g. ".tags.txt": the tags beside each image as a WD14-style comma list
    jsonl_tags: bool = False  # metadata.jsonl rows get a "tags" field (the same comma list)

    def __post_init__(self):
        if self.existing not in EXISTING:
            raise ValueError(f"existing must be one of {', '.join(EXISTING)}, not {self.existing!r}")
        if self.sidecar_ext and not self.sidecar_ext.startswith("."):
            self.sidecar_ext = "." + self.sidecar_ext
        if self.sidecar_ext and self.sidecar_ext.lower() in IMAGE_EXTENSIONS:
            raise ValueError(f"the sidecar extension {self.sidecar_ext} would overwrite images")
        self._check_tags()
        if not (self.csv or self.sidecar_ext or self.jsonl or self.coco_results or self.metadata or self.xmp_sidecar
                or self.tags_ext):
            raise ValueError("choose at least one output: CSV, sidecar text files, metadata.jsonl, COCO JSON, "
                             "metadata, XMP sidecars or tags files")
        if ((self.sidecar_ext or self.jsonl or self.metadata or self.xmp_sidecar or self.tags_ext)
                and (sys_ := system_folder(self.root))):
            raise ValueError(f"{self.root} is a system folder ({sys_}): no captions are written there. Copy the photos "
                             "into a folder of yours, or write only a CSV elsewhere (--out)")
        for out in (self.csv, self.coco_results):
            if out and (sys_ := system_folder(os.path.dirname(os.path.abspath(os.path.expanduser(out))))):
                raise ValueError(f"{out} lies in a system folder ({sys_}): choose a place of yours for it")

    def append_run_id(self) -> str:
        """The id of an "append" run: its settings, so that the same command run again resumes it."""
        if self.run_id:
            return self.run_id
        keys = ("root", "csv", "sidecar_ext", "jsonl", "coco_results", "metadata", "xmp_sidecar", "prefix", "suffix",
                "num_captions", "top_p", "min_len", "beam", "max_len", "object_words", "include", "exclude")
        settings = asdict(self) | self.decode.to_dict()  # flat, as before DecodeOptions: an older run still resumes
        return hashlib.sha256(json.dumps({k: settings[k] for k in keys}, sort_keys=True).encode()).hexdigest()[:16]

    def _check_tags(self) -> None:
        if not self.tags_ext:
            return
        self.tags_ext = self.tags_ext if self.tags_ext.startswith(".") else "." + self.tags_ext
        if Path("x" + self.tags_ext).suffix.lower() in IMAGE_EXTENSIONS:
            raise ValueError(f"the tags file extension {self.tags_ext} would overwrite images")
        if self.sidecar_ext and self.tags_ext.lower() == self.sidecar_ext.lower():
            raise ValueError(f"the tags files and the caption sidecars would both be {self.tags_ext}; "
                             "give the tags another extension, e.g. .tags.txt")


@dataclass
class Progress:
    """A photo library run's counts, given to on_progress after each batch and returned at the end (what the
    Train page's monitor draws of a training run is core.runs.folder.RunProgress)."""

    done: int  # images finished in this run (captioned or failed)
    total: int  # images this run captions (those not already done)
    skipped: int  # images already done before this run
    failed: int
    images_per_s: float
    eta_s: float | None
    latest: list[dict]  # the rows of the last batch: {"image", "path", "caption", "score", "error"}
    kept: int = 0  # photos whose own description (a person's) was kept, not replaced ("skip")


# --------------------------------------------------------------------------------------------- names

def display_name(rel: str) -> str:
    """A relative path as text for the rows: a name that is not UTF-8 (`caf\\xe9.jpg`, kept by Python as a lone
    surrogate) gets backslash escapes, which every output can hold."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return os.fsencode(rel).decode("utf-8", "backslashreplace")


# ------------------------------------------------------------------------------------------- journals

def _safe_cell(value) -> str:
    """Neutralise spreadsheet formulas (CSV injection): a cell starting with = + - @ tab or CR gets a leading '."""
    text = "" if value is None else str(value)
    if text[:1] not in ("=", "+", "-", "@", "\t", "\r"):
        return text
    try:
        float(text)  # a plain number such as a negative score is data, not a formula
        return text
    except ValueError:
        return "'" + text


def csv_line(row: list) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([_safe_cell(v) for v in row])
    return buf.getvalue()


def quality_cells(result) -> list[str]:
    """The tags, confidence and check columns of a CaptionResult."""
    if result.error:
        return ["", "", ""]
    conf = "" if result.confidence is None else f"{result.confidence:.2f}"
    return [format_tags(result.tags), conf, "check this one" if result.check else ""]


def csv_rows(results) -> list[list[str]]:
    """CaptionResults (of core.nn.captioner) as CSV rows, header first; formula-like cells neutralised."""
    rows = [CSV_COLUMNS]
    for r in results:
        alts = " | ".join(c for c, _ in r.alternatives)
        score = "" if r.score is None else f"{r.score:.4f}"
        rows.append([r.image, r.caption, score, alts, r.error or ""] + quality_cells(r))
    return rows


def csv_bytes(results) -> bytes:
    """The CSV as UTF-8 with a byte-order mark, so that Excel on Windows shows accented names correctly."""
    return csv_table(csv_rows(results))


def csv_table(rows: list[list[str]]) -> bytes:
    """Rows (header first) as csv_bytes writes them."""
    return (BOM + "".join(csv_line(row) for row in rows)).encode("utf-8")


def write_csv(results, path: Path) -> None:
    atomic_write_bytes(Path(path), csv_bytes(results))


def _mark(path: Path) -> Path:
    return path.with_name(f".{path.name}{MARK}")


def _decoded(path: Path, raw: bytes | None = None) -> str:
    """A journal's text; one in another encoding (a cp1252 CSV from Excel) is refused, never rewritten."""
    try:
        return (path.read_bytes() if raw is None else raw).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LibraryError(f"{path} is not UTF-8 text (saved by another program?); it is left unchanged: "
                           "choose another output file") from None


def _complete_lines(path: Path) -> str:
    """A journal's text. A half-written last line (a crash) is cut off the file, but only in a file this program
    created (its mark is beside it): in anyone else's file the last line counts as it is, and nothing changes."""
    if not path.exists():
        return ""
    raw = path.read_bytes()
    text = _decoded(path, raw)
    if text and not text.endswith("\n") and _mark(path).exists():
        text = text[: text.rfind("\n") + 1]
        atomic_write_bytes(path, ((BOM if raw.startswith(BOM.encode()) else "") + text).encode("utf-8"))
    return text


class _Journal:
    """A CSV or JSON Lines file that grows by whole lines, flushed to disk after each batch (sync)."""

    def __init__(self, path: Path, header: str = ""):
        self.path, self.header = path, header
        self.f = None

    def rewrite(self, lines: list[str]) -> None:
        atomic_write_bytes(self.path, (self.header + "".join(lines)).encode("utf-8"))

    def append(self, lines: list[str]) -> None:
        """Add whole lines; on disk at the next sync()."""
        try:
            if self.f is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                new = not self.path.exists() or self.path.stat().st_size == 0
                if new:
                    atomic_write_bytes(_mark(self.path), b"created by the captioner; it may repair this file\n")
                    atomic_write_bytes(self.path, self.header.encode("utf-8"))
                else:
                    with open(self.path, "rb") as f:
                        f.seek(-1, os.SEEK_END)
                        unfinished = f.read(1) != b"\n"  # someone's file without a final newline: keep its last line
                self.f = open(self.path, "a", encoding="utf-8", newline="")
                if not new and unfinished:
                    self.f.write("\n")
            self.f.write("".join(lines))
        except OSError as e:
            raise plain_os_error(e, self.path) from e

    def sync(self) -> None:
        """Flush to disk: once per batch, not per image (an fsync costs milliseconds on many laptop disks)."""
        if self.f:
            try:
                self.f.flush()
                os.fsync(self.f.fileno())
            except OSError as e:
                raise plain_os_error(e, self.path) from e

    def close(self) -> None:
        if self.f:
            try:
                self.sync()
            finally:
                f, self.f = self.f, None
                try:
                    f.close()
                except OSError:  # the flush in close() fails as sync() did; the error is already raised
                    pass


def check_csv(path: Path) -> None:
    """An existing CSV must be one this program writes (its columns), else it is refused: it is a person's file."""
    if not path.exists() or path.stat().st_size == 0:
        return
    first = _decoded(path).split("\n", 1)[0].rstrip("\r")
    if next(csv.reader([first]), []) not in (CSV_COLUMNS, CSV_COLUMNS[:_OLD_COLUMNS]):
        raise LibraryError(f"{path} is not a captions CSV of this program (its first line is {first[:80]!r}); "
                           "it is left unchanged: choose another output file")


def check_coco(path: Path) -> None:
    """An existing COCO results file must be a list of {"image_id", "caption"}: anything else (an annotation file
    given by mistake) is a person's file, refused rather than replaced."""
    if not path.exists():
        return
    try:
        data = json.loads(_decoded(path))
    except ValueError:
        data = None
    if not (isinstance(data, list) and all(isinstance(e, dict) and "image_id" in e and "caption" in e for e in data)):
        raise LibraryError(f"{path} is not a COCO results list ([{{image_id, caption}}]); it is left unchanged: "
                           "choose another output file")


def _read_csv(path: Path) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(_complete_lines(path))))
    return [r for r in rows[1:] if len(r) in (_OLD_COLUMNS, len(CSV_COLUMNS))]


def _lines(text: str, keepends: bool = False) -> list[str]:
    """Lines that end at "\n" only: str.splitlines also ends them at U+2028, U+2029 and NEL, which a caption
    written with ensure_ascii=False may hold (its photo would be captioned again on every run)."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]] if keepends else parts[:-1]
    return lines + [parts[-1]] if parts[-1] else lines


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    for line in _lines(_complete_lines(path)):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("file_name"), str):
            out.append(obj)
    return out


def _read_coco(path: Path) -> list[dict]:
    try:
        return [e for e in json.loads(path.read_text(encoding="utf-8")) if isinstance(e, dict)]
    except (OSError, ValueError, TypeError):
        return []


def _parts(path: Path) -> list[Path]:
    """The ranks' parts of a shared output, by rank."""
    found = [p for p in path.parent.glob(f"{glob.escape(path.name)}{PART}*") if p.name.rsplit("-", 1)[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[-1]))


def _remove(parts: list[Path]) -> int:
    for p in parts:
        p.unlink(missing_ok=True)
        _mark(p).unlink(missing_ok=True)
    return len(parts)


def coco_image_ids(root: Path) -> dict[str, int]:
    """file name -> COCO image id, from the annotation files of the COCO dataset the folder belongs to."""
    ids = {}
    for base in (root, root.parent, root.parent.parent):
        for ann in sorted((base / "annotations").glob("*.json")) if (base / "annotations").is_dir() else []:
            try:
                images = json.loads(ann.read_text(encoding="utf-8")).get("images", [])
            except (OSError, ValueError, AttributeError):
                continue
            ids.update({im["file_name"]: int(im["id"]) for im in images if isinstance(im, dict) and "id" in im
                        and "file_name" in im})
        if ids:
            break
    return ids


# ------------------------------------------------------------------------------------------- the run

def _sharing_sidecars(images: list[Path]) -> set[Path]:
    """The images that would share a sidecar with another (a.jpg + a.png, b.jpg + b.JPG, case-insensitively as on
    macOS and Windows): they get sidecars named after their whole name (a.jpg.txt). Repeated until no two share
    one, since a.jpg's a.jpg.txt is also what a.jpg.png would use."""
    full: set[Path] = set()
    while True:
        key = {p: (p.as_posix() if p in full else p.with_suffix("").as_posix()).casefold() for p in images}
        counts = Counter(key.values())
        more = {p for p in images if counts[key[p]] > 1} - full
        if not more:
            return full
        full |= more


class Library:
    """One library folder and its outputs: what is done, and writing new captions into every output."""

    def __init__(self, cfg: LibraryConfig, part: int | None = None):
        """part: this rank's number under torchrun; the shared outputs are then its parts (`<output>.part-<rank>`)."""
        self.cfg = cfg
        self.root = Path(os.path.abspath(Path(cfg.root).expanduser()))  # not resolve(): links inside stay inside
        tail = "" if part is None else f"{PART}{part}"
        self.csv = _Journal(Path(f"{cfg.csv}{tail}"), BOM + csv_line(CSV_COLUMNS)) if cfg.csv else None
        if self.csv and part is None:
            check_csv(self.csv.path)
        if cfg.coco_results and part is None:
            check_coco(Path(cfg.coco_results))
        self.jsonl = _Journal(self.root / f"metadata.jsonl{tail}") if cfg.jsonl else None
        self.coco_path = Path(f"{cfg.coco_results}{tail}") if cfg.coco_results else None
        self.coco: list[dict] = []
        self._coco_loaded = False
        self.coco_ids = coco_image_ids(self.root) if cfg.coco_results else {}
        self._coco_saved = 0.0
        self.kept = 0  # photos whose own description "skip" kept
        # "overwrite": the old rows of the images captioned again, dropped once their new rows are on disk
        self._old_rows: Counter = Counter()
        self._old_lines: Counter = Counter()
        self._old_coco: set = set()
        self._written: set[str] = set()  # names with new rows in this run (or in the merged parts)
        self._appended: list[str] = []  # "append": names done since the last sync, for the run journal
        self._append_log = None
        if cfg.existing == "append":
            first = (Path(cfg.csv) if cfg.csv else Path(cfg.coco_results) if cfg.coco_results
                     else self.root / "metadata.jsonl")
            self.append_path = first.with_name(f".{first.name}{APPEND_RUN}{tail}")

    def name(self, path: Path) -> str:
        """The image's name in every output: its path relative to the library, as text."""
        return display_name(self.rel(path))

    def rel(self, path: Path) -> str:
        """Its path relative to the library as the file system spells it (a lone surrogate for a non-UTF-8 byte)."""
        return Path(os.path.abspath(path)).relative_to(self.root).as_posix()

    def sidecar(self, path: Path, full_name: bool = False) -> Path:
        """photo.jpg -> photo.txt; photo.jpg.txt when another image would share photo.txt (a.jpg + a.png)."""
        return path.with_name(path.name + self.cfg.sidecar_ext) if full_name else path.with_suffix(self.cfg.sidecar_ext)

    def plan(self, images: list[Path]) -> list[tuple[Path, set[str]]]:
        """(image, outputs to write) for each image this run captions; with "skip", only outputs still lacking it.

        Besides outputs, a set may hold "full-name" (its sidecars are named photo.jpg.txt / photo.jpg.xmp)."""
        cfg, names = self.cfg, {self.name(p) for p in images}
        self._written, self._names = set(), names
        csv_rows = _read_csv(self.csv.path) if self.csv else []
        # the CSV holds names as csv_line wrote them: "=x.png" as "'=x.png" (the formula guard), so compare those
        in_csv = {r[0] for r in csv_rows}
        failed = {r[0] for r in csv_rows if r[4]}  # unreadable last time: recorded, not retried on every run
        jsonl = _read_jsonl(self.jsonl.path) if self.jsonl else []
        in_jsonl = {o["file_name"] for o in jsonl}
        self._load_coco()
        if cfg.existing == "overwrite":  # old rows stay until the new ones are written (finish())
            cells = {_safe_cell(n) for n in names}
            self._old_rows = Counter(tuple(r) for r in csv_rows if r[0] in cells)
            self._old_lines = Counter(json.dumps(o, sort_keys=True) for o in jsonl if o["file_name"] in names)
            self._old_coco = {self.coco_id(p) for p in images} & {e.get("image_id") for e in self.coco}
        done_appending = self._append_resume() if cfg.existing == "append" else set()
        in_coco = {e.get("image_id") for e in self.coco}
        full_names = _sharing_sidecars(images)
        plan = []
        for p in images:
            want = set()
            if self.csv:
                want.add("csv")
            if self.jsonl:
                want.add("jsonl")
            if cfg.sidecar_ext:
                want.add("sidecar")
            if cfg.tags_ext:
                want.add("tags")
            if self.coco_path and self.coco_id(p) is not None:
                want.add("coco")
            if cfg.metadata and imagemeta.can_write(p):
                want.add("metadata")
            if cfg.xmp_sidecar:
                want.add("xmp")
            full = p in full_names
            name = self.name(p)
            if cfg.existing == "append" and name in done_appending:
                continue
            if cfg.existing == "skip":
                cell = _safe_cell(name)  # as the CSV spells it
                if cell in failed:
                    continue
                have = {"csv"} if cell in in_csv else set()
                have |= {"jsonl"} if name in in_jsonl else set()
                have |= {"sidecar"} if cfg.sidecar_ext and self.sidecar(p, full).exists() else set()
                have |= {"tags"} if cfg.tags_ext and tags_path(p, cfg.tags_ext, full).exists() else set()
                have |= {"coco"} if self.coco_id(p) in in_coco else set()
                if "metadata" in want and imagemeta.has_description(p):  # ours, or a person's, which is kept
                    have.add("metadata")
                    self.kept += imagemeta.has_person_description(p)
                if "xmp" in want and imagemeta.read_xmp_sidecar(p, full):
                    have.add("xmp")
                want -= have
            if want:
                plan.append((p, want | ({"full-name"} if full else set())))
        return plan

    def _load_coco(self) -> None:
        self.coco, self._coco_loaded = _read_coco(self.coco_path) if self.coco_path else [], True

    # ------------------------------------------------------------------- "append" resumes, "overwrite" drops last

    def _append_resume(self) -> set[str]:
        """The names an interrupted "append" run of the same settings already did; starts this run's journal."""
        run, done, paths = self.cfg.append_run_id(), set(), [self.append_path, *_parts(self.append_path)]
        for path in paths:
            lines = _lines(path.read_text(encoding="utf-8", errors="replace")) if path.exists() else []
            try:
                head = json.loads(lines[0]) if lines else {}
            except json.JSONDecodeError:
                head = {}
            if head.get("run") != run:
                continue
            for line in lines[1:]:
                try:
                    done.add(json.loads(line))
                except json.JSONDecodeError:  # a half-written last line
                    pass
            if self.csv and "csv_rows" in head:  # rows written after the last journal sync (a kill in between)
                cells = {_safe_cell(n): n for n in self._names}
                done |= {cells.get(r[0], r[0]) for r in _read_csv(self.csv.path)[head["csv_rows"]:]}
        if not any(p.exists() for p in paths) or not done:
            for path in paths:
                path.unlink(missing_ok=True)
            head = {"run": run} | ({"csv_rows": len(_read_csv(self.csv.path))} if self.csv else {})
            atomic_write_bytes(self.append_path, (json.dumps(head) + "\n").encode("utf-8"))
        return done

    def finish(self, complete: bool) -> None:
        """After the run: drop the rows "overwrite" replaced (their new rows are on disk); end an "append" run's
        journal when every image of it is done (else a rerun resumes it)."""
        self.close()
        if self._old_rows and self.csv:
            written = {_safe_cell(w) for w in self._written}
            budget = Counter({t: n for t, n in self._old_rows.items() if t[0] in written})
            keep = []
            for r in _read_csv(self.csv.path):
                if budget[tuple(r)] > 0:
                    budget[tuple(r)] -= 1
                    continue
                keep.append(r)
            self.csv.rewrite([csv_line(r) for r in keep])
        if self._old_lines and self.jsonl:
            budget = Counter({t: n for t, n in self._old_lines.items() if json.loads(t)["file_name"] in self._written})
            keep = []
            for line in _lines(_complete_lines(self.jsonl.path), keepends=True):
                try:
                    key = json.dumps(json.loads(line), sort_keys=True)
                except json.JSONDecodeError:
                    key = None
                if key is not None and budget[key] > 0:
                    budget[key] -= 1
                    continue
                keep.append(line)  # another program's lines stay exactly as they were
            self.jsonl.rewrite(keep)
        if self.cfg.existing == "append" and complete:
            for path in [self.append_path, *_parts(self.append_path)]:
                path.unlink(missing_ok=True)

    def merge_parts(self, order: dict[str, int], recovering: bool = False) -> int:
        """Merge the ranks' parts of the shared outputs into them, rows in input order (`order`: name -> position;
        others last, as they were), atomically; then delete the parts. Returns how many parts there were.

        recovering: parts a killed run left; rows the shared output already holds are not added twice (a run
        killed between writing the merged file and deleting its parts)."""
        merged = 0
        if self.csv and (parts := _parts(self.csv.path)):
            rows = _read_csv(self.csv.path)
            have = {tuple(r) for r in rows} if recovering else set()
            new = [r for part in parts for r in _read_csv(part) if tuple(r) not in have]
            cell_names = {_safe_cell(n): n for n in order}
            self._written |= {cell_names.get(r[0], r[0]) for r in new}
            rows += new
            cell_order = {_safe_cell(name): i for name, i in order.items()}  # names as the CSV spells them
            rows.sort(key=lambda r: cell_order.get(r[0], len(order)))  # stable: an image's K rows keep their order
            self.csv.close()
            self.csv.rewrite([csv_line(r) for r in rows])
            merged += _remove(parts)
        if self.jsonl and (parts := _parts(self.jsonl.path)):
            lines = [ln if ln.endswith("\n") else ln + "\n"
                     for ln in _lines(_complete_lines(self.jsonl.path), keepends=True)]  # as they are
            objs = _read_jsonl(self.jsonl.path)
            have = {json.dumps(o, sort_keys=True) for o in objs} if recovering else set()
            new = [o for part in parts for o in _read_jsonl(part) if json.dumps(o, sort_keys=True) not in have]
            self._written |= {o["file_name"] for o in new}
            lines += [json.dumps(o, ensure_ascii=False) + "\n" for o in new]

            def position(line: str) -> int:  # lines that are not ours (not an image's object) keep their place first
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    return -1
                return order.get(obj.get("file_name"), len(order)) if isinstance(obj, dict) else -1
            lines.sort(key=position)
            self.jsonl.close()
            self.jsonl.rewrite(lines)
            merged += _remove(parts)
        if self.coco_path and (parts := _parts(self.coco_path)):
            if not self._coco_loaded:  # else plan() has loaded it
                self._load_coco()
            new = [e for part in parts for e in _read_coco(part)]
            fresh = {e.get("image_id") for e in new} & self._old_coco  # "overwrite": their old entries go now
            entries = {(e.get("image_id"), e.get("caption")): e for e in self.coco if e.get("image_id") not in fresh}
            entries.update({(e.get("image_id"), e.get("caption")): e for e in new})
            self.coco = list(entries.values())
            self.save_coco(force=True)
            merged += _remove(parts)
        return merged

    def coco_id(self, path: Path) -> int | None:
        if path.name in self.coco_ids:
            return self.coco_ids[path.name]
        digits = re.fullmatch(r"0*(\d+)", path.stem)  # COCO's own file names are the zero-padded id
        return int(digits.group(1)) if digits else None

    # ------------------------------------------------------------------------------------------ writing

    def write(self, path: Path, outputs: set[str], result, seen: "imagemeta.FileIdentity | None" = None) -> dict:
        """Write one image's result to the outputs named; returns its row for the page.

        seen: the file's identity before it was captioned; a file changed since gets no caption anywhere (and no
        CSV row, so that the next run captions it)."""
        cfg, name = self.cfg, self.name(path)
        captions = [result.caption] + [c for c, _ in result.alternatives][: cfg.decode.num_captions - 1]
        plain = [c for c in captions if c] if not result.error else []
        captions = [f"{cfg.prefix}{c}{cfg.suffix}" for c in plain]
        error = result.error or ""
        row = {"image": name, "path": str(path), "caption": captions[0] if captions else "",
               "score": result.score, "error": error, "tags": format_tags(result.tags),
               "confidence": result.confidence, "check": result.check}
        if seen is not None and not result.error:
            try:
                now = imagemeta.identity(path)
            except OSError:
                now = None
            if now != seen:
                return row | {"caption": "", "error": "the photo changed while it was being captioned; "
                                                       "nothing was written (run again to caption it)"}
        if "csv" in outputs:
            if captions:
                scores = [result.score] + [s for _, s in result.alternatives]
                alts = (" | ".join(f"{cfg.prefix}{c}{cfg.suffix}" for c, _ in result.alternatives)
                        if cfg.decode.num_captions == 1 else "")
                quality = quality_cells(result)
                self.csv.append([csv_line([name, c, f"{s:.4f}", alts, ""] + quality) for c, s in zip(captions, scores)])
            else:
                self.csv.append([csv_line([name, "", "", "", error, "", "", ""])])
        if captions:
            meta = captions[0] if cfg.affix_metadata else plain[0]  # a trigger word is for trainers, not alt text
            problems = self._write_files(path, name, outputs, captions, meta, seen, tags=result.tags)
            if problems:
                row["error"] = "; ".join(problems)
        self._written.add(name)
        if cfg.existing == "append":
            self._appended.append(name)
        return row

    def _write_files(self, path: Path, name: str, outputs: set[str], captions: list[str], meta: str,
                     seen, tags=()) -> list[str]:
        """Every file output of one image; returns what could not be written, in words (the others are written)."""
        cfg, append, problems = self.cfg, self.cfg.existing == "append", []
        full = "full-name" in outputs
        if "jsonl" in outputs:
            obj = {"file_name": name, "text": captions[0]} | ({"texts": captions} if len(captions) > 1 else {})
            obj |= {"tags": tag_list(tags)} if cfg.jsonl_tags else {}
            self.jsonl.append([json.dumps(obj, ensure_ascii=False) + "\n"])
        if "coco" in outputs:
            cid = self.coco_id(path)
            if cid in self._old_coco:  # "overwrite": the old entry goes as the new one comes
                self.coco = [e for e in self.coco if e.get("image_id") != cid]
                self._old_coco.discard(cid)
            self.coco.append({"image_id": cid, "caption": captions[0]})
        try:
            if "sidecar" in outputs:
                side = self.sidecar(path, full)
                if side.exists() and not os.stat(side).st_mode & 0o222:
                    raise PermissionError(f"{side.name} is write-protected; left unchanged")
                old = side.read_text(encoding="utf-8").rstrip("\n") if append and side.exists() else ""
                atomic_write_bytes(side, ("\n".join(([old] if old else []) + captions) + "\n").encode("utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"the sidecar could not be written ({e})")
        if "tags" in outputs:
            try:
                write_tags_file(path, cfg.tags_ext, tags, full)
            except OSError as e:
                problems.append(f"the tags file could not be written ({e})")
        for out, write in (("xmp", lambda: imagemeta.write_xmp_sidecar(path, meta, existing=cfg.existing,
                                                                        full_name=full)),
                           ("metadata", lambda: imagemeta.write_caption(path, meta, existing=cfg.existing,
                                                                         expect=seen, keep_mtime=cfg.keep_mtime))):
            if out not in outputs:
                continue
            if out == "metadata" and (sys_ := system_folder(os.path.dirname(os.path.realpath(path)))):
                problems.append(f"the photo is a link into a system folder ({sys_}); left unchanged")
                continue
            try:
                write()
            except imagemeta.KeptDescription as e:
                self.kept += 1
                problems.append(f"not written into the {'XMP sidecar' if out == 'xmp' else 'photo'}: {e}")
            except (OSError, imagemeta.MetadataError) as e:
                problems.append(f"the caption could not be written into the "
                                f"{'XMP sidecar' if out == 'xmp' else 'photo'} ({e})")
        return problems

    def sync(self) -> None:
        """The rows written so far, on disk (after each batch); then the "append" run's journal."""
        for j in (self.csv, self.jsonl):
            if j:
                j.sync()
        if self._appended:
            try:
                if self._append_log is None:
                    new = not self.append_path.exists() or self.append_path.stat().st_size == 0
                    self._append_log = open(self.append_path, "a", encoding="utf-8")
                    if new:  # a rank's part: the run it belongs to first
                        self._append_log.write(json.dumps({"run": self.cfg.append_run_id()}) + "\n")
                self._append_log.write("".join(json.dumps(n) + "\n" for n in self._appended))
                self._append_log.flush()
                os.fsync(self._append_log.fileno())
            except OSError as e:
                raise plain_os_error(e, self.append_path) from e
            self._appended = []

    def save_coco(self, force: bool = False) -> None:
        """The COCO JSON is one array: rewritten atomically every few seconds and at the end, not per image."""
        if self.coco_path and (force or time.monotonic() - self._coco_saved > 5):
            atomic_write_json(self.coco_path, sorted(self.coco, key=lambda e: (e["image_id"], e["caption"])))
            self._coco_saved = time.monotonic()

    def close(self) -> None:
        try:
            self.sync()
        finally:
            for j in (self.csv, self.jsonl):
                if j:
                    j.close()
            if self._append_log:
                self._append_log.close()
                self._append_log = None
        self.save_coco(force=True)


def tags_path(image: Path, tags_ext: str, full_name: bool = False) -> Path:
    """photo.jpg + ".tags.txt" -> photo.tags.txt (what kohya's merge_dd_tags_to_metadata.py reads with
    `--caption_extension .tags.txt`; its default .txt is this app's caption sidecar); photo.jpg.tags.txt when
    another image would share the name (a.jpg + a.png), as the sidecars do."""
    return image.with_name((image.name if full_name else image.stem) + tags_ext)


def write_tags_file(image: Path, tags_ext: str, tags, full_name: bool = False) -> None:
    """The image's tags as one comma-separated line ("cat, bed"), replaced whole, atomically; an image with no
    tag above the threshold gets an empty file, so a dataset tool finds a tags file for every image."""
    atomic_write_bytes(tags_path(image, tags_ext, full_name), (tag_list(tags) + "\n").encode("utf-8"))


class Team(Protocol):
    """The processes of one torchrun launch, as caption_library needs them (core.nn.captioner implements it)."""

    rank: int
    world: int

    def broadcast(self, obj): ...  # rank 0's JSON-able obj, on every rank

    def barrier(self) -> None: ...


def caption_library(cfg: LibraryConfig, captioner, on_progress: Callable[[Progress], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, team: Team | None = None) -> Progress:
    """Caption every image of the library that is not done yet, writing as it goes.

    `on_progress` is called after each batch; an exception raised there (Ctrl+C, the page's Cancel) or
    `should_stop()` returning True ends the run after that batch with everything written so far kept.
    `team`: this process is one rank of several (torchrun); it captions its share and reports on that share.
    Raises LibraryError (an output that is not safe to use) or core.base.files.DiskFullError, both in plain words."""
    try:
        return _caption_library(cfg, captioner, on_progress, should_stop, team)
    except DiskFullError:
        raise
    except OSError as e:  # a full disk, whichever write saw it first, in words
        if isinstance(plain := plain_os_error(e, e.filename or "the outputs"), DiskFullError):
            raise plain from e
        raise


def _caption_library(cfg: LibraryConfig, captioner, on_progress, should_stop, team) -> Progress:
    lead = team is None or team.rank == 0
    if lead:  # the other ranks neither walk the folder nor read the outputs: rank 0 tells them their share
        lib = Library(cfg)
        images = find_images(lib.root, cfg.recursive, cfg.include, cfg.exclude)
        order = {lib.name(p): i for i, p in enumerate(images)}
        lib.merge_parts(order, recovering=True)  # what the ranks of a killed torchrun run had written
        plan = lib.plan(images)
    if team is None:
        progress = None
        try:
            progress = _caption_plan(lib, plan, len(images) - len(plan), captioner, on_progress, should_stop)
        finally:
            lib.finish(complete=progress is not None and progress.done == progress.total)
        progress.kept = lib.kept
        return progress
    share = Library(cfg, part=team.rank)
    told = team.broadcast({"skipped": len(images) - len(plan), "kept": lib.kept,
                           "plan": [[lib.rel(p), sorted(o)] for p, o in plan]} if lead else None)
    mine = [(share.root / rel, set(outs)) for rel, outs in told["plan"][team.rank::team.world]]
    try:
        progress = _caption_plan(share, mine, told["skipped"], captioner, on_progress, should_stop)
    finally:
        share.close()
    team.barrier()  # every rank's parts are complete
    if lead:
        lib.merge_parts(order)
        lib.finish(complete=progress.done == progress.total)
    progress.kept = told["kept"] + share.kept
    return progress


def _caption_plan(lib: Library, plan: list[tuple[Path, set[str]]], skipped: int, captioner, on_progress,
                  should_stop) -> Progress:
    cfg = lib.cfg
    progress = Progress(0, len(plan), skipped, 0, 0.0, None, [])
    seen: dict[int, imagemeta.FileIdentity | None] = {}  # plan index -> identity, for the images not written yet
    taken = [0]

    def identify(upto: int) -> None:
        """Take the identities of the images up to `upto` before the captioner can read them (it reads ahead)."""
        for i in range(taken[0], min(upto, len(plan))):
            try:
                seen[i] = imagemeta.identity(plan[i][0])
            except OSError:
                seen[i] = None  # unreadable: the captioner reports it
        taken[0] = max(taken[0], min(upto, len(plan)))
    identify(AHEAD * cfg.batch_size)
    t0 = time.perf_counter()
    batches = captioner.iter_captions([(str(p), p) for p, _ in plan], options=cfg.decode, batch_size=cfg.batch_size)
    for results in batches:
        start = progress.done
        progress.latest = [lib.write(plan[start + i][0], plan[start + i][1], r, seen.pop(start + i, None))
                           for i, r in enumerate(results)]
        lib.sync()
        progress.done += len(results)
        identify(progress.done + AHEAD * cfg.batch_size)
        progress.failed += sum(1 for row in progress.latest if row["error"])
        progress.kept = lib.kept
        elapsed = time.perf_counter() - t0
        progress.images_per_s = progress.done / max(elapsed, 1e-9)
        progress.eta_s = (progress.total - progress.done) / progress.images_per_s if progress.images_per_s else None
        lib.save_coco()
        if on_progress:
            on_progress(progress)
        if should_stop and should_stop():
            batches.close()
            break
    return progress
