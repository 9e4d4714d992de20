"""Captioning a photo library on disk: find the images, caption what is not done yet, write each output as it goes.

Outputs (any combination): a CSV (one row per caption, grows row by row), a sidecar text file per image
(`photo.jpg` -> `photo.txt`, as kohya's sd-scripts and most training tools read them), `metadata.jsonl` in the
folder (`{"file_name", "text"}`, Hugging Face's `imagefolder` layout), a COCO results JSON (`[{"image_id",
"caption"}]`) and the caption inside the image file's metadata (core.imagemeta). Every row names the image by
its path relative to the library folder, which is also how a rerun recognises what is already done:
`existing="skip"` (the default) captions only the images some output still lacks, so an interrupted run
(crash, Ctrl+C, Cancel on the page) continues where it stopped.

Under torchrun (`caption_library(..., team=...)`, see core.caption) rank 0 plans, every rank captions its share
(every world-th image of the plan) and writes its images' own files (sidecars, embedded metadata) directly and
its rows of the shared files (CSV, metadata.jsonl, COCO JSON) to parts beside them (`captions.csv.part-1`); after a
barrier rank 0 merges the parts into the shared files in input order, atomically, then deletes them. Parts left by
a killed run are merged first by the next run, so a resume skips what they hold.
"""
from __future__ import annotations

import csv
import fnmatch
import glob
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from . import imagemeta
from .config import DEFAULT_BEAM, DEFAULT_MAX_LEN
from .data import IMAGE_EXTENSIONS
from .files import atomic_write_bytes, atomic_write_json
from .tags import MAX_TAGS, TAG_MIN_PROB, format_tags, tag_list

CSV_COLUMNS = ["image", "caption", "score", "alternatives", "error", "tags", "confidence", "check"]
_OLD_COLUMNS = 5  # CSVs written before tags/confidence/check: still read when a run resumes
EXISTING = ("skip", "overwrite", "append")
BOM = "\ufeff"  # spreadsheets on Windows read a CSV as UTF-8 only when it starts with one
PART = ".part-"  # <shared output>.part-<rank>: one rank's rows of a shared output under torchrun


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
    num_captions: int = 1
    top_p: float | None = None  # sample the K captions (nucleus) instead of taking the K best beams
    min_len: int = 1
    beam: int = DEFAULT_BEAM
    max_len: int = DEFAULT_MAX_LEN
    object_words: bool = True  # name a confidently recognised object in the caption (core.tags)
    batch_size: int = 128  # images per beam search and per progress step (core.caption encodes them 32 at a time)
    tag_threshold: float = TAG_MIN_PROB  # tags at least this probable are kept (core.tags)
    max_tags: int = MAX_TAGS
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
        if not (self.csv or self.sidecar_ext or self.jsonl or self.coco_results or self.metadata or self.tags_ext):
            raise ValueError("choose at least one output: CSV, sidecar text files, metadata.jsonl, COCO JSON or metadata")

    def _check_tags(self) -> None:
        if not 0 <= self.tag_threshold <= 1:
            raise ValueError(f"the tag threshold is a probability between 0 and 1, not {self.tag_threshold}")
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
    done: int  # images finished in this run (captioned or failed)
    total: int  # images this run captions (those not already done)
    skipped: int  # images already done before this run
    failed: int
    images_per_s: float
    eta_s: float | None
    latest: list[dict]  # the rows of the last batch: {"image", "path", "caption", "score", "error"}


# ------------------------------------------------------------------------------------------- finding

def find_images(root: Path | str, recursive: bool = True, include=(), exclude=()) -> list[Path]:
    """Image files under `root`, sorted by relative path; hidden files and folders are left out.

    A pattern matches the relative path (`2023/*.jpg`, `**/raw/*`) or the file name (`*.png`)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"the folder {root} does not exist")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in files:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if include and not _matches(rel, include):
                continue
            if exclude and _matches(rel, exclude):
                continue
            found.append((rel, path))
    return [p for _, p in sorted(found)]


def _matches(rel: str, patterns) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p.removeprefix("**/"))
               for p in patterns)


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
    """CaptionResults (of core.caption) as CSV rows, header first; formula-like cells neutralised."""
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


def _complete_lines(path: Path) -> str:
    """A journal's text up to its last complete line; a half-written last line (a crash) is cut off the file."""
    if not path.exists():
        return ""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        atomic_write_bytes(path, ((BOM if path.suffix == ".csv" else "") + text).encode("utf-8"))
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
        if self.f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists() or self.path.stat().st_size == 0
            self.f = open(self.path, "a", encoding="utf-8", newline="")
            if new:
                self.f.write(self.header)
        self.f.write("".join(lines))

    def sync(self) -> None:
        """Flush to disk: once per batch, not per image (an fsync costs milliseconds on many laptop disks)."""
        if self.f:
            self.f.flush()
            os.fsync(self.f.fileno())

    def close(self) -> None:
        if self.f:
            self.sync()
            self.f.close()
            self.f = None


def _read_csv(path: Path) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(_complete_lines(path))))
    return [r for r in rows[1:] if len(r) in (_OLD_COLUMNS, len(CSV_COLUMNS))]


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    for line in _complete_lines(path).splitlines():
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

class Library:
    """One library folder and its outputs: what is done, and writing new captions into every output."""

    def __init__(self, cfg: LibraryConfig, part: int | None = None):
        """part: this rank's number under torchrun; the shared outputs are then its parts (`<output>.part-<rank>`)."""
        self.cfg = cfg
        self.root = Path(os.path.abspath(Path(cfg.root).expanduser()))  # not resolve(): links inside stay inside
        tail = "" if part is None else f"{PART}{part}"
        self.csv = _Journal(Path(f"{cfg.csv}{tail}"), BOM + csv_line(CSV_COLUMNS)) if cfg.csv else None
        self.jsonl = _Journal(self.root / f"metadata.jsonl{tail}") if cfg.jsonl else None
        self.coco_path = Path(f"{cfg.coco_results}{tail}") if cfg.coco_results else None
        self.coco: list[dict] = []
        self._coco_loaded = False
        self.coco_ids = coco_image_ids(self.root) if cfg.coco_results else {}
        self._coco_saved = 0.0

    def name(self, path: Path) -> str:
        return Path(os.path.abspath(path)).relative_to(self.root).as_posix()

    def plan(self, images: list[Path]) -> list[tuple[Path, set[str]]]:
        """(image, outputs to write) for each image this run captions; with "skip", only outputs still lacking it."""
        cfg, names = self.cfg, {self.name(p) for p in images}
        csv_rows = _read_csv(self.csv.path) if self.csv else []
        # the CSV holds names as csv_line wrote them: "=x.png" as "'=x.png" (the formula guard), so compare those
        in_csv = {r[0] for r in csv_rows}
        failed = {r[0] for r in csv_rows if r[4]}  # unreadable last time: recorded, not retried on every run
        in_jsonl = {o["file_name"] for o in _read_jsonl(self.jsonl.path)} if self.jsonl else set()
        self._load_coco()
        if cfg.existing == "overwrite":  # rows of the images about to be captioned again go; the others stay
            cells = {_safe_cell(n) for n in names}
            if self.csv and in_csv & cells:
                self.csv.rewrite([csv_line(r) for r in _read_csv(self.csv.path) if r[0] not in cells])
            if self.jsonl and in_jsonl & names:
                self.jsonl.rewrite([json.dumps(o, ensure_ascii=False) + "\n" for o in _read_jsonl(self.jsonl.path)
                                    if o["file_name"] not in names])
            ids = {self.coco_id(p) for p in images}
            self.coco = [e for e in self.coco if e.get("image_id") not in ids]
        in_coco = {e.get("image_id") for e in self.coco}
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
            if cfg.existing == "skip":
                name = self.name(p)
                cell = _safe_cell(name)  # as the CSV spells it
                if cell in failed:
                    continue
                have = {"csv"} if cell in in_csv else set()
                have |= {"jsonl"} if name in in_jsonl else set()
                have |= {"sidecar"} if cfg.sidecar_ext and p.with_suffix(cfg.sidecar_ext).exists() else set()
                have |= {"tags"} if cfg.tags_ext and tags_path(p, cfg.tags_ext).exists() else set()
                have |= {"coco"} if self.coco_id(p) in in_coco else set()
                have |= {"metadata"} if "metadata" in want and imagemeta.read_alt_text(p) else set()
                want -= have
            if want:
                plan.append((p, want))
        return plan

    def _load_coco(self) -> None:
        self.coco, self._coco_loaded = _read_coco(self.coco_path) if self.coco_path else [], True

    def merge_parts(self, order: dict[str, int], recovering: bool = False) -> int:
        """Merge the ranks' parts of the shared outputs into them, rows in input order (`order`: name -> position;
        others last, as they were), atomically; then delete the parts. Returns how many parts there were.

        recovering: parts a killed run left; rows the shared output already holds are not added twice (a run
        killed between writing the merged file and deleting its parts)."""
        merged = 0
        if self.csv and (parts := _parts(self.csv.path)):
            rows = _read_csv(self.csv.path)
            have = {tuple(r) for r in rows} if recovering else set()
            rows += [r for part in parts for r in _read_csv(part) if tuple(r) not in have]
            cell_order = {_safe_cell(name): i for name, i in order.items()}  # names as the CSV spells them
            rows.sort(key=lambda r: cell_order.get(r[0], len(order)))  # stable: an image's K rows keep their order
            self.csv.close()
            self.csv.rewrite([csv_line(r) for r in rows])
            merged += _remove(parts)
        if self.jsonl and (parts := _parts(self.jsonl.path)):
            objs = _read_jsonl(self.jsonl.path)
            have = {json.dumps(o, sort_keys=True) for o in objs} if recovering else set()
            objs += [o for part in parts for o in _read_jsonl(part) if json.dumps(o, sort_keys=True) not in have]
            objs.sort(key=lambda o: order.get(o["file_name"], len(order)))
            self.jsonl.close()
            self.jsonl.rewrite([json.dumps(o, ensure_ascii=False) + "\n" for o in objs])
            merged += _remove(parts)
        if self.coco_path and (parts := _parts(self.coco_path)):
            if not self._coco_loaded:  # else plan() has loaded it, less what "overwrite" captions again
                self._load_coco()
            entries = {(e.get("image_id"), e.get("caption")): e for e in self.coco}
            for part in parts:
                entries.update({(e.get("image_id"), e.get("caption")): e for e in _read_coco(part)})
            self.coco = list(entries.values())
            self.save_coco(force=True)
            merged += _remove(parts)
        return merged

    def coco_id(self, path: Path) -> int | None:
        if path.name in self.coco_ids:
            return self.coco_ids[path.name]
        digits = re.fullmatch(r"0*(\d+)", path.stem)  # COCO's own file names are the zero-padded id
        return int(digits.group(1)) if digits else None

    def write(self, path: Path, outputs: set[str], result) -> dict:
        """Write one image's result to the outputs named; returns its row for the page."""
        cfg, name = self.cfg, self.name(path)
        captions = [result.caption] + [c for c, _ in result.alternatives][: cfg.num_captions - 1]
        captions = [f"{cfg.prefix}{c}{cfg.suffix}" for c in captions if c] if not result.error else []
        error = result.error or ""
        if "csv" in outputs:
            if captions:
                scores = [result.score] + [s for _, s in result.alternatives]
                alts = " | ".join(f"{cfg.prefix}{c}{cfg.suffix}" for c, _ in result.alternatives) if cfg.num_captions == 1 else ""
                quality = quality_cells(result)
                self.csv.append([csv_line([name, c, f"{s:.4f}", alts, ""] + quality) for c, s in zip(captions, scores)])
            else:
                self.csv.append([csv_line([name, "", "", "", error, "", "", ""])])
        if captions:
            try:
                self._write_files(path, name, outputs, captions, tags=result.tags)
            except (OSError, imagemeta.MetadataError) as e:
                error = f"the caption could not be written ({e})"
        return {"image": name, "path": str(path), "caption": captions[0] if captions else "",
                "score": result.score, "error": error, "tags": format_tags(result.tags),
                "confidence": result.confidence, "check": result.check}

    def _write_files(self, path: Path, name: str, outputs: set[str], captions: list[str], tags=()) -> None:
        cfg, append = self.cfg, self.cfg.existing == "append"
        if "jsonl" in outputs:
            obj = {"file_name": name, "text": captions[0]} | ({"texts": captions} if len(captions) > 1 else {})
            obj |= {"tags": tag_list(tags)} if cfg.jsonl_tags else {}
            self.jsonl.append([json.dumps(obj, ensure_ascii=False) + "\n"])
        if "coco" in outputs:
            self.coco.append({"image_id": self.coco_id(path), "caption": captions[0]})
        if "sidecar" in outputs:
            side = path.with_suffix(cfg.sidecar_ext)
            old = side.read_text(encoding="utf-8").rstrip("\n") if append and side.exists() else ""
            atomic_write_bytes(side, ("\n".join(([old] if old else []) + captions) + "\n").encode("utf-8"))
        if "tags" in outputs:
            write_tags_file(path, cfg.tags_ext, tags)
        if "metadata" in outputs:
            old = imagemeta.read_caption(path) if append else None
            imagemeta.write_caption(path, f"{old} {captions[0]}" if old else captions[0])

    def sync(self) -> None:
        """The rows written so far, on disk (after each batch)."""
        for j in (self.csv, self.jsonl):
            if j:
                j.sync()

    def save_coco(self, force: bool = False) -> None:
        """The COCO JSON is one array: rewritten atomically every few seconds and at the end, not per image."""
        if self.coco_path and (force or time.monotonic() - self._coco_saved > 5):
            atomic_write_json(self.coco_path, sorted(self.coco, key=lambda e: (e["image_id"], e["caption"])))
            self._coco_saved = time.monotonic()

    def close(self) -> None:
        for j in (self.csv, self.jsonl):
            if j:
                j.close()
        self.save_coco(force=True)


def tags_path(image: Path, tags_ext: str) -> Path:
    """photo.jpg + ".tags.txt" -> photo.tags.txt (what kohya's merge_dd_tags_to_metadata.py reads with
    `--caption_extension .tags.txt`; its default .txt is this app's caption sidecar)."""
    return image.with_name(image.stem + tags_ext)


def write_tags_file(image: Path, tags_ext: str, tags) -> None:
    """The image's tags as one comma-separated line ("cat, bed"), replaced whole, atomically; an image with no
    tag above the threshold gets an empty file, so a dataset tool finds a tags file for every image."""
    atomic_write_bytes(tags_path(image, tags_ext), (tag_list(tags) + "\n").encode("utf-8"))


class Team(Protocol):
    """The processes of one torchrun launch, as caption_library needs them (core.caption implements it)."""

    rank: int
    world: int

    def broadcast(self, obj): ...  # rank 0's JSON-able obj, on every rank

    def barrier(self) -> None: ...


def caption_library(cfg: LibraryConfig, captioner, on_progress: Callable[[Progress], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, team: Team | None = None) -> Progress:
    """Caption every image of the library that is not done yet, writing as it goes.

    `on_progress` is called after each batch; an exception raised there (Ctrl+C, the page's Cancel) or
    `should_stop()` returning True ends the run after that batch with everything written so far kept.
    `team`: this process is one rank of several (torchrun); it captions its share and reports on that share."""
    lead = team is None or team.rank == 0
    if lead:  # the other ranks neither walk the folder nor read the outputs: rank 0 tells them their share
        lib = Library(cfg)
        images = find_images(lib.root, cfg.recursive, cfg.include, cfg.exclude)
        order = {lib.name(p): i for i, p in enumerate(images)}
        lib.merge_parts(order, recovering=True)  # what the ranks of a killed torchrun run had written
        plan = lib.plan(images)
    if team is None:
        try:
            return _caption_plan(lib, plan, len(images) - len(plan), captioner, on_progress, should_stop)
        finally:
            lib.close()
    share = Library(cfg, part=team.rank)
    told = team.broadcast({"skipped": len(images) - len(plan), "plan": [[lib.name(p), sorted(o)] for p, o in plan]}
                          if lead else None)
    mine = [(share.root / name, set(outs)) for name, outs in told["plan"][team.rank::team.world]]
    try:
        progress = _caption_plan(share, mine, told["skipped"], captioner, on_progress, should_stop)
    finally:
        share.close()
    team.barrier()  # every rank's parts are complete
    if lead:
        lib.merge_parts(order)
        lib.close()
    return progress


def _caption_plan(lib: Library, plan: list[tuple[Path, set[str]]], skipped: int, captioner, on_progress,
                  should_stop) -> Progress:
    cfg = lib.cfg
    progress = Progress(0, len(plan), skipped, 0, 0.0, None, [])
    t0 = time.perf_counter()
    batches = captioner.iter_captions([(str(p), p) for p, _ in plan], beam=cfg.beam, max_len=cfg.max_len,
                                      batch_size=cfg.batch_size, num_captions=cfg.num_captions,
                                      min_len=cfg.min_len, top_p=cfg.top_p, object_words=cfg.object_words,
                                      tag_threshold=cfg.tag_threshold, max_tags=cfg.max_tags)
    for results in batches:
        start = progress.done
        progress.latest = [lib.write(plan[start + i][0], plan[start + i][1], r) for i, r in enumerate(results)]
        lib.sync()
        progress.done += len(results)
        progress.failed += sum(1 for row in progress.latest if row["error"])
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
