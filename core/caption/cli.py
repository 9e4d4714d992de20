"""`python -m core.caption PATH... --out captions.csv`: caption photos from a terminal, writing as it goes.

`torchrun --nproc-per-node N -m core.caption FOLDER ...` splits the work across N processes (one per GPU, or CPU
processes): see core.caption.library for who writes what. The model itself runs in core.nn.captioner, imported
only when a command needs it (`--help` and `--from-csv` load no torch).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.base.config import ConfigError, DecodeOptions
from core.base.files import DiskFullError, atomic_write_bytes
from core.base.paths import models_dir
from core.bundle.store import BundleError, get_active
from core.caption.library import (
    CSV_COLUMNS,
    EXISTING,
    LibraryConfig,
    LibraryError,
    caption_library,
    csv_rows,
    csv_table,
)
from core.caption.progress import PhotoProgress
from core.caption.result import CaptionResult
from core.data.images import collect_images

if TYPE_CHECKING:  # the model runs in core.nn, imported when a command needs it: --help and --from-csv stay light
    from core.nn.captioner import Captioner, TorchrunTeam


# ----------------------------------------------------------------------------- the command line
# (csv_rows, csv_bytes and write_csv live in core.caption.library, which the pages import without torch)

def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m core.caption", description="Caption a folder of images (or image files), writing as it goes. "
        "Run it again after an interruption: images already captioned are skipped.")
    p.add_argument("paths", nargs="+", help="a folder (searched recursively) or image files")
    p.add_argument("--out", default="captions.csv", help="CSV file to write (default: captions.csv; '' for none)")
    p.add_argument("--sidecar-ext", default=None, help="also write a text file per image with this extension, e.g. .txt")
    p.add_argument("--jsonl", action="store_true", help="also write FOLDER/metadata.jsonl (file_name, text)")
    p.add_argument("--coco-results", default=None, help="also write a COCO results JSON ([{image_id, caption}])")
    p.add_argument("--metadata", action="store_true", help="also write the caption into each JPEG/PNG's metadata "
                   "(XMP description and alt text, EXIF ImageDescription, PNG Description); pixels are not touched; "
                   "a description already there is kept unless --existing overwrite (which keeps the old text in XMP)")
    p.add_argument("--xmp-sidecar", action="store_true", help="also write the caption into an XMP sidecar per image "
                   "(photo.jpg.xmp, or merged into an existing photo.xmp), which Lightroom, darktable and digiKam read; "
                   "the photo is not touched (recommended over --metadata)")
    p.add_argument("--prefix-in-metadata", action="store_true",
                   help="also put --prefix/--suffix into the photo's metadata and XMP (default: only CSV, sidecars, "
                   "JSON Lines and COCO, which trainers read)")
    p.add_argument("--keep-mtime", action=argparse.BooleanOptionalAction, default=True,
                   help="photos whose metadata is written keep their modification time (default: keep)")
    p.add_argument("--existing", choices=EXISTING, default="skip",
                   help="images that already have a caption: skip (default; resumes a run), overwrite or append")
    p.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--include", action="append", default=[], help="only files matching this glob (repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="leave out files matching this glob (repeatable)")
    p.add_argument("--prefix", default="", help='added before every caption, e.g. "sks, "')
    p.add_argument("--suffix", default="", help="added after every caption")
    d = DecodeOptions()  # the decoding flags' defaults; decode_options() makes the flags one DecodeOptions again
    p.add_argument("--num-captions", type=int, default=d.num_captions,
                   help=f"captions per image: the top K beams (default {d.num_captions})")
    p.add_argument("--top-p", type=float, default=d.top_p, help="sample the captions (nucleus, e.g. 0.9) instead")
    p.add_argument("--min-len", type=int, default=d.min_len, help=f"shortest caption in words (default {d.min_len})")
    p.add_argument("--object-words", choices=("on", "off"), default="on" if d.object_words else "off",
                   help="on (default): a confidently recognised object (e.g. cat 0.96) is named in the caption")
    p.add_argument("--tag-threshold", type=float, default=d.tag_threshold,
                   help=f"keep the tags (objects the ImageNet classifier sees) at least this probable, 0-1 "
                        f"(default {d.tag_threshold}); they go into the CSV's tags column and the outputs below")
    p.add_argument("--max-tags", type=int, default=d.max_tags, help=f"tags per image at most (default {d.max_tags})")
    p.add_argument("--tags-ext", default=None, help="also write each image's tags beside it as one comma-separated "
                   "line, in a file with this extension (e.g. .tags.txt: photo.jpg -> photo.tags.txt)")
    p.add_argument("--jsonl-tags", action="store_true", help="give metadata.jsonl rows a tags field (with --jsonl)")
    p.add_argument("--model", default=None,
                   help="model bundle folder (default: the model made active in the app, else models/default)")
    p.add_argument("--beam", type=int, default=d.beam, help=f"beam width; 1 = greedy (default: {d.beam})")
    p.add_argument("--max-len", type=int, default=d.max_len, help=f"longest caption in words (default: {d.max_len})")
    p.add_argument("--batch-size", type=int, default=LibraryConfig.batch_size,
                   help=f"images per beam search (default {LibraryConfig.batch_size}); progress moves per photo")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--from-csv", default=None, metavar="REVIEWED.csv",
                   help="write the captions of this CSV (e.g. a captions.csv you corrected) into the chosen outputs "
                        "(--sidecar-ext, --metadata, --jsonl...) of the folder, without captioning again")
    args = p.parse_args(argv)
    try:
        args.decode = decode_options(args)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if args.from_csv:
        return _write_from_csv(args)
    from core.nn.captioner import TorchrunTeam, launched_by_torchrun

    team = TorchrunTeam(args.device) if launched_by_torchrun() else None
    try:
        code = _main(args, team)
    finally:
        if team:
            team.close()
    if team:
        # Every output is written and synced, and the process group is gone. A rank then ends without the
        # interpreter's teardown: there, now and then, a native thread of torch's was destroyed while still joinable
        # ("terminate called without an active exception", SIGABRT after the CSV was written; seen in fresh-clone
        # CI runs of test_caption_distributed), which torchrun reports as the whole job failing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def decode_options(args) -> DecodeOptions:
    """The decoding flags as one DecodeOptions (ConfigError, in words, when they cannot work)."""
    return DecodeOptions(beam=args.beam, max_len=args.max_len, min_len=args.min_len, num_captions=args.num_captions,
                         top_p=args.top_p, object_words=args.object_words == "on", tag_threshold=args.tag_threshold,
                         max_tags=args.max_tags)


class _Reporting:
    """The captioner as caption_library and _caption_files see it, with a progress bar (core.caption.progress) that starts
    when they hand it the images to caption, so that it moves from the first photo read on."""

    def __init__(self, captioner: Captioner, label: str = "", team: TorchrunTeam | None = None):
        self.captioner, self.label, self.team = captioner, label, team
        self.bar: PhotoProgress | None = None
        captioner.on_image_read = lambda i: self.bar.photo_read() if self.bar else None

    def iter_captions(self, items, **options):
        self.close()
        if items:
            # ranks share one terminal: plain lines every 10 s from each, never bars drawn over each other
            self.bar = PhotoProgress(len(items), label=self.label, tty=False if self.team else None,
                                     every_s=10 if self.team else 0)
        return self.captioner.iter_captions(items, **options)

    def caption(self, items, **options) -> list[CaptionResult]:
        results = []
        for batch in self.iter_captions(items, **options):
            results += batch
            self.done([(r.image, r.error or "") for r in batch])
        return results

    def done(self, rows: list[tuple[str, str]]) -> None:
        if self.bar:
            self.bar.photos_done(rows)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
            self.bar = None


def chosen_model(model: str | None) -> tuple[Path, str]:
    """(bundle folder, why this one): --model when given, else the model made active in the app (models/active.json,
    core.bundle.store.get_active), else models/default."""
    if model:
        return Path(model), "--model"
    active = get_active(models_dir())
    if active.name != "default":
        return active, "the model made active in the app"
    return active, "the default model"


def _load(args, device: str, team: TorchrunTeam | None) -> Captioner | None:
    """The captioner, after saying which model it uses; None (the reason printed) when that model cannot be used."""
    path, why = chosen_model(args.model)
    lead = team is None or team.rank == 0
    if lead:
        print(f"model: {path.name} ({why}): {path}", file=sys.stderr, flush=True)
    from core.nn.captioner import Captioner

    try:
        return Captioner(path, device=device)
    except (BundleError, OSError) as e:
        if lead:
            hint = "" if args.model else "; choose one with --model FOLDER, or train one on the app's Train page"
            print(f"the model {path} cannot be used: {e}{hint}", file=sys.stderr)
        return None


def _main(args, team: TorchrunTeam | None) -> int:
    folders = [Path(x) for x in args.paths if Path(x).is_dir()]
    device = str(team.device) if team else args.device
    if len(args.paths) > 1 or not folders:
        return _caption_files(args, device, team)
    try:
        cfg = LibraryConfig(str(folders[0]), recursive=args.recursive, include=args.include, exclude=args.exclude,
                            csv=args.out or None, sidecar_ext=args.sidecar_ext, jsonl=args.jsonl,
                            coco_results=args.coco_results, metadata=args.metadata, existing=args.existing,
                            prefix=args.prefix, suffix=args.suffix, decode=args.decode, batch_size=args.batch_size,
                            xmp_sidecar=args.xmp_sidecar, affix_metadata=args.prefix_in_metadata,
                            keep_mtime=args.keep_mtime, tags_ext=args.tags_ext, jsonl_tags=args.jsonl_tags)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    captioner = _load(args, device, team)
    if captioner is None:
        return 2
    who = f"rank {team.rank}/{team.world}: " if team else ""
    reporting = _Reporting(captioner, who, team)
    try:
        pr = caption_library(cfg, reporting, team=team,
                             on_progress=lambda pr: reporting.done([(r["image"], r["error"]) for r in pr.latest]))
    except (LibraryError, DiskFullError) as e:  # an output not safe to use, a full disk: said plainly
        reporting.close()
        print(f"\n{e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        reporting.close()
        print("\nstopped; everything captioned so far is written. Run the same command again to continue.",
              file=sys.stderr)
        return 130
    reporting.close()
    print(f"{who}captioned {pr.done} images ({pr.skipped} already done)"
          + (f", {pr.failed} could not be read or written" if pr.failed else "")
          + (f"; {pr.kept} photo{'s' * (pr.kept != 1)} kept the description already there (--existing overwrite "
             "replaces it)" if pr.kept else ""),
          file=sys.stderr)
    return 0


def _write_from_csv(args) -> int:
    """--from-csv: the reviewed captions into the folder's outputs (core.caption.reviewed), one pass, no model."""
    from core.caption.reviewed import write_from_csv

    if len(args.paths) != 1 or not Path(args.paths[0]).is_dir():
        print("--from-csv writes into one folder: give the folder the CSV's images are in", file=sys.stderr)
        return 2
    same = args.out and Path(args.out).resolve() == Path(args.from_csv).resolve()
    try:  # the reviewed CSV itself is not written again (its rows would count as done, and skip every photo)
        cfg = LibraryConfig(args.paths[0], recursive=args.recursive, include=args.include, exclude=args.exclude,
                            csv=None if same else (args.out or None), sidecar_ext=args.sidecar_ext, jsonl=args.jsonl,
                            coco_results=args.coco_results, metadata=args.metadata, existing=args.existing,
                            prefix=args.prefix, suffix=args.suffix, decode=args.decode, batch_size=args.batch_size)
        pr, missing, rows = write_from_csv(cfg, args.from_csv)
    except (ValueError, FileNotFoundError) as e:
        print(e, file=sys.stderr)
        return 2
    print(f"wrote the reviewed captions of {pr.done} images ({pr.skipped} already had captions"
          + (f"; use --existing overwrite to replace them" if pr.skipped else "") + ")"
          + (f", {pr.failed} could not be written" if pr.failed else "")
          + (f"; {len(missing)} of the {rows} images in {args.from_csv} are not in the folder" if missing else ""),
          file=sys.stderr)
    return 1 if pr.failed else 0


def _caption_files(args, device: str, team: TorchrunTeam | None) -> int:
    """Several paths, or single files: one pass, one CSV (under torchrun: each rank a share, rank 0 writes)."""
    files = collect_images(args.paths, args.recursive, args.include, args.exclude)
    if not files:
        print("no images found in " + " ".join(args.paths), file=sys.stderr)
        return 1
    mine = files[team.rank::team.world] if team else files
    captioner = _load(args, device, team)
    if captioner is None:
        return 2
    reporting = _Reporting(captioner, f"rank {team.rank}/{team.world}: " if team else "", team)
    try:
        results = reporting.caption([(str(f), f) for f in mine], options=args.decode, batch_size=args.batch_size)
    finally:
        reporting.close()
    for r in results:
        if r.caption:
            r.caption = f"{args.prefix}{r.caption}{args.suffix}"
    rows = csv_rows(results)[1:]
    if team:
        shares = team.gather(rows)  # rank r captioned files r, r + world, ...: deal them back into input order
        if shares is None:
            return 0
        rows = [shares[i % team.world][i // team.world] for i in range(len(files))]
    atomic_write_bytes(Path(args.out or "captions.csv"), csv_table([CSV_COLUMNS, *rows]))
    bad = sum(1 for r in rows if r[4])
    print(f"wrote {len(rows)} rows to {args.out}" + (f" ({bad} could not be read)" if bad else ""), file=sys.stderr)
    return 0
