"""Training: `python -m core.train --data DATASET [--flags]`, or `run(TrainConfig(...), run_dir)`.

With a frozen backbone (the default) every image is encoded once into the feature cache and the epochs
train the decoder alone. Cross-entropy epochs come first, then optional self-critical sequence training
(SCST: CIDEr reward against the greedy caption). Progress is one JSON object per line in
<run>/progress.jsonl (schema: docs/core_api.md). A STOP file in the run folder or SIGTERM checkpoints and
exits; --resume continues exactly where the checkpoint left off.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .backbones import get_spec
from .bundle import MODELS_DIR, new_bundle_dir, save_bundle
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig
from .data import iter_image_batches, load_split
from .decode import greedy_decode, sample_captions
from .device import bf16_native, pick_device
from .evaluate import CorpusCider, score_captions
from .features import FeatureCache, encode_to_cache
from .files import atomic_write_json
from .model import CaptionModel, Encoder
from .vocabulary import END, PAD, Vocabulary, tokenize


@dataclass
class TrainConfig:
    data: str = "cocoapi"  # dataset folder, COCO or Flickr layout
    train_split: str = "train"
    val_split: str = "val"
    subset: float = 1.0  # quick run: this fraction of the images (chosen by a stable hash)
    backbone: str = "efficientnet_lite0"
    decoder: str = "attention"
    embed_dim: int = 256
    hidden_dim: int = 512
    attention_dim: int = 256
    dropout: float = 0.3
    min_word_count: int = 5
    epochs: int = 10  # cross-entropy epochs
    batch_size: int = 64
    lr: float = 4e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    alpha_c: float = 1.0  # "doubly stochastic" attention regulariser (Xu et al.), attention decoder only
    scst_epochs: int = 0  # self-critical epochs after the cross-entropy ones
    scst_lr: float = 2e-5
    scst_samples: int = 5
    scst_batch_size: int = 50  # images per SCST step
    fine_tune: bool = False  # train the backbone too (no feature cache; needs a GPU to be practical)
    device: str = "auto"
    model_name: str = ""  # folder name under models_dir for the finished model ("" = run folder name)
    models_dir: str = ""  # "" = the project's models/
    cache_dir: str = ".cache/features"
    val_images: int = 500  # images captioned for validation each epoch
    checkpoint_every: int = 200  # steps
    log_every: int = 10  # steps
    seed: int = 0
    max_len: int = 20  # longest caption in words; longer training captions are cut
    beam_size: int = 3  # recorded for the app; validation decodes greedily
    encode_batch_size: int = 32

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
        return cls(**d)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def caption_loss(model, feats, captions, label_smoothing=0.0, alpha_c=0.0) -> torch.Tensor:
    """The one training/validation step: teacher-forced cross-entropy (+ attention regulariser)."""
    logits, alphas = model(feats, captions)  # (B, L-1, V), (B, L-1, P) or None
    targets = captions[:, 1:]  # (B, L-1)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=PAD,
                           label_smoothing=label_smoothing)
    if alphas is not None and alpha_c:
        mask = (targets != PAD).unsqueeze(2).float()  # (B, L-1, 1)
        loss = loss + alpha_c * ((1.0 - (alphas * mask).sum(1)) ** 2).mean()  # each cell looked at ~once
    return loss


def pad_captions(seqs: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(seqs), max(map(len, seqs))), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s)
    return out  # (B, L)


def read_progress(run_dir: Path) -> list[dict]:
    """All events of a run; a half-written last line (the trainer is mid-write) is skipped."""
    path = Path(run_dir) / "progress.jsonl"
    events = []
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


class Reporter:
    """Appends events to progress.jsonl and passes them to any other listeners (minGPT-style callbacks)."""

    def __init__(self, run_dir: Path, listeners: list[Callable[[dict], None]] = ()):
        self.path = Path(run_dir) / "progress.jsonl"
        self.listeners = list(listeners)

    def __call__(self, event: str, **fields) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        for listen in self.listeners:
            listen(record)


class Stopper:
    """A STOP file in the run folder, or SIGTERM, asks the trainer to checkpoint and exit."""

    def __init__(self, run_dir: Path):
        self.file = Path(run_dir) / "STOP"
        self.file.unlink(missing_ok=True)  # a STOP left from an earlier stop must not end the resumed run
        self.reason = None
        if hasattr(signal, "SIGTERM"):
            try:
                signal.signal(signal.SIGTERM, self._on_sigterm)
            except ValueError:  # not the main thread (e.g. called from a test thread): STOP file only
                pass

    def _on_sigterm(self, *_):
        self.reason = "SIGTERM"

    def __call__(self) -> bool:
        if self.reason is None and self.file.exists():
            self.reason = "stop file"
        return self.reason is not None


def _stable_subset(items, fraction):
    if fraction >= 1.0:
        return items
    keep = max(1, math.ceil(len(items) * fraction))
    chosen = sorted(items, key=lambda it: zlib.crc32(it.path.name.encode()))[:keep]
    return sorted(chosen, key=lambda it: it.path.name)


class FeatureSource:
    """Image features for a batch of image indices: from the cache, or by running the (fine-tuned) encoder."""

    def __init__(self, cache_array=None, rows=None, encoder=None, paths=None, spec=None):
        self.array, self.rows, self.encoder, self.paths, self.spec = cache_array, rows, encoder, paths, spec

    def __call__(self, image_ids: list[int], device) -> torch.Tensor:
        if self.encoder is None:
            rows = np.asarray([self.rows[i] for i in image_ids])
            return torch.from_numpy(np.asarray(self.array[rows], dtype=np.float32)).to(device)  # (B, P, C)
        s = self.spec
        _, images, errors = next(iter_image_batches([self.paths[i] for i in image_ids], s.image_size, s.mean,
                                                    s.std, len(image_ids)))
        if errors:  # fine-tuning has no cache pass to weed these out beforehand; say which file, plainly
            i, msg = next(iter(errors.items()))
            raise ValueError(f"cannot fine-tune on {self.paths[image_ids[i]]}: {msg}; remove or fix that file")
        return self.encoder(images.to(device))  # (B, P, C)


@torch.no_grad()
def validate(model, source, val_ids, device, max_len, batch_size=100):
    """Greedy captions for the validation images -> {image_id: token ids}."""
    model.eval()
    captions = {}
    for start in range(0, len(val_ids), batch_size):
        ids = val_ids[start:start + batch_size]
        tokens, _ = greedy_decode(model.decoder, source(ids, device), max_len)
        for i, seq in zip(ids, tokens.tolist()):
            captions[i] = seq
    model.train()
    return captions


def _scst_loss(model, feats, refs, cider, vocab, cfg):
    """Self-critical loss for a batch of images: reward = CIDEr(sample) - CIDEr(greedy caption)."""
    model.eval()
    greedy, _ = greedy_decode(model.decoder, feats, cfg.max_len)  # (B, T)
    model.train()
    n = cfg.scst_samples
    tokens, logps, mask = sample_captions(model.decoder, feats, cfg.max_len, repeats=n)  # (B*n, T) each
    samples = [vocab.decode(t) for t in tokens.tolist()]
    baseline = cider([vocab.decode(t) for t in greedy.tolist()], refs)  # (B,)
    reward = cider(samples, [r for r in refs for _ in range(n)]) - np.repeat(baseline, n)  # (B*n,)
    reward_t = torch.from_numpy(reward).float().to(feats.device).unsqueeze(1)  # (B*n, 1)
    loss = -(reward_t * logps * mask).sum() / mask.sum()
    return loss


def run(cfg: TrainConfig, run_dir: Path, resume: bool = False, listeners=()) -> Path | None:
    """Train; -> the new model folder, or None when stopped early (resume later)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    emit = Reporter(run_dir, listeners)
    try:
        return _run(cfg, run_dir, resume, emit)
    except Exception as e:
        emit("error", message=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        raise


def _run(cfg: TrainConfig, run_dir: Path, resume: bool, emit) -> Path | None:
    t_start = time.time()
    ckpt_path = run_dir / "checkpoint.safetensors"
    resume = resume and ckpt_path.exists()
    atomic_write_json(run_dir / "config.json", cfg.to_dict())
    emit("start", config=cfg.to_dict(), pid=os.getpid(), resumed=resume)
    should_stop = Stopper(run_dir)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)

    emit("phase", phase="loading")
    train_items, missing_train = load_split(cfg.data, cfg.train_split)
    val_items, missing_val = load_split(cfg.data, cfg.val_split)
    train_items, val_items = _stable_subset(train_items, cfg.subset), _stable_subset(val_items, cfg.subset)
    val_items = val_items[: cfg.val_images]
    if not train_items or not val_items:
        raise ValueError(f"{cfg.data} has no usable images in split {cfg.train_split!r} or {cfg.val_split!r}")
    emit("log", message=f"{len(train_items)} training and {len(val_items)} validation images "
                        f"({missing_train + missing_val} listed but missing)")
    if resume:
        vocab = Vocabulary.load(run_dir / "vocab.json")
    else:
        vocab = Vocabulary.build((c for it in train_items for c in it.captions), cfg.min_word_count)
        vocab.save(run_dir / "vocab.json")
    mcfg = ModelConfig(vocab_size=len(vocab), backbone=cfg.backbone, decoder=cfg.decoder, embed_dim=cfg.embed_dim,
                       hidden_dim=cfg.hidden_dim, attention_dim=cfg.attention_dim, dropout=cfg.dropout,
                       fine_tune=cfg.fine_tune, max_len=cfg.max_len)
    model = CaptionModel(mcfg, with_encoder=cfg.fine_tune, pretrained=True).to(device)
    spec = get_spec(cfg.backbone)

    all_items = train_items + val_items
    paths = [it.path for it in all_items]
    if cfg.fine_tune:
        source = FeatureSource(encoder=model.encoder, paths=paths, spec=spec)
        usable = list(range(len(all_items)))
    else:
        emit("phase", phase="encoding")
        grid = (spec.image_size // 32, spec.image_size // 32)
        cache = FeatureCache(Path(cfg.cache_dir), cfg.backbone, "grid" if cfg.decoder == "attention" else "pooled",
                             grid)
        encoder = Encoder(cfg.backbone, pretrained=True).to(device)
        rows = encode_to_cache(encoder, cfg.backbone, paths, cache, device, cfg.encode_batch_size,
                               on_progress=lambda p: emit("encode", **p), should_stop=should_stop)
        del encoder
        if should_stop():
            emit("stopped", reason=should_stop.reason)
            return None
        source = FeatureSource(cache_array=cache.array(), rows=rows)
        usable = [i for i, r in enumerate(rows) if r is not None]
    usable_set = set(usable)
    train_ids = [i for i in range(len(train_items)) if i in usable_set]
    val_ids = [i for i in range(len(train_items), len(all_items)) if i in usable_set]
    samples = [(i, vocab.encode(" ".join(tokenize(c)[: cfg.max_len]))) for i in train_ids
               for c in all_items[i].captions]
    val_refs = {i: all_items[i].captions for i in val_ids}

    bs = cfg.batch_size
    steps_per_epoch = math.ceil(len(samples) / bs)
    scst_steps_per_epoch = math.ceil(len(train_ids) / cfg.scst_batch_size)
    total_steps = cfg.epochs * steps_per_epoch + cfg.scst_epochs * scst_steps_per_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"epoch": 0, "batch": 0, "global_step": 0, "best_cider": -1.0, "history": []}
    if resume:
        meta = load_checkpoint(ckpt_path, model, optimizer)
        state.update({k: meta[k] for k in state})
        emit("log", message=f"resumed at epoch {state['epoch'] + 1}, batch {state['batch']}")

    def checkpoint():
        save_checkpoint(ckpt_path, model, optimizer, {**state, "config": cfg.to_dict()})
        emit("checkpoint", path=str(ckpt_path), epoch=state["epoch"] + 1, step=state["global_step"])

    # mixed precision on CUDA: bf16 where the GPU has it (no loss scaling needed), else fp16 with a GradScaler
    amp_dtype = (torch.bfloat16 if bf16_native(device) else torch.float16) if device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext

    cider = CorpusCider([it.captions for it in train_items]) if cfg.scst_epochs else None
    train_refs = [all_items[i].captions for i in train_ids]
    total_epochs = cfg.epochs + cfg.scst_epochs
    model.train()
    t_session, steps_session = time.time(), 0
    emit("phase", phase="training")
    while state["epoch"] < total_epochs:
        epoch = state["epoch"]
        scst = epoch >= cfg.epochs
        if scst and epoch == cfg.epochs and state["batch"] == 0:
            optimizer = torch.optim.AdamW(params, lr=cfg.scst_lr, weight_decay=0.0)  # fresh moments for RL
            emit("phase", phase="scst")
        n_items = len(train_ids) if scst else len(samples)
        per = cfg.scst_batch_size if scst else bs
        n_batches = math.ceil(n_items / per)
        perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)).tolist()
        losses = []
        for b in range(state["batch"], n_batches):
            chunk = perm[b * per:(b + 1) * per]
            with autocast():
                if scst:
                    ids = [train_ids[k] for k in chunk]
                    loss = _scst_loss(model, source(ids, device), [train_refs[k] for k in chunk], cider, vocab,
                                         cfg)
                    lr = cfg.scst_lr
                else:
                    ids = [samples[k][0] for k in chunk]
                    caps = pad_captions([samples[k][1] for k in chunk]).to(device)
                    lr = lr_at(state["global_step"], cfg.epochs * steps_per_epoch, cfg.lr, cfg.warmup_steps)
                    loss = caption_loss(model, source(ids, device), caps, cfg.label_smoothing,
                                        cfg.alpha_c if cfg.decoder == "attention" else 0.0)
            for g in optimizer.param_groups:
                g["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            state["global_step"] += 1
            state["batch"] = b + 1
            steps_session += 1
            if state["global_step"] % cfg.log_every == 0 or b + 1 == n_batches:
                elapsed = time.time() - t_session
                emit("step", epoch=epoch + 1, epochs=total_epochs, step=state["global_step"], total_steps=total_steps,
                     batch=b + 1, batches=n_batches, loss=round(float(np.mean(losses[-cfg.log_every:])), 4),
                     lr=lr, scst=scst, images_per_s=round(steps_session * per / max(elapsed, 1e-6), 1),
                     eta_s=round((total_steps - state["global_step"]) * elapsed / steps_session, 1))
            if should_stop():
                checkpoint()
                emit("stopped", reason=should_stop.reason)
                return None
            if state["global_step"] % cfg.checkpoint_every == 0:
                checkpoint()

        emit("phase", phase="validating")
        captions = validate(model, source, val_ids, device, cfg.max_len)
        texts = {i: vocab.decode(seq) for i, seq in captions.items()}
        metrics = score_captions({str(i): val_refs[i] for i in texts}, {str(i): t for i, t in texts.items()},
                                 fast=True)
        metrics = {k: metrics[k] for k in ("BLEU-4", "CIDEr")}
        metrics["distinct_captions"] = len(set(texts.values()))
        emit("sample", epoch=epoch + 1, samples=[
            {"image": str(all_items[i].path), "caption": texts[i], "references": val_refs[i][:3]} for i in val_ids[:4]])
        best = metrics["CIDEr"] > state["best_cider"]
        state["history"].append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
                                 "scst": scst, **metrics})
        if best:
            state["best_cider"] = metrics["CIDEr"]
            save_bundle(run_dir / "best", model, vocab, metrics={"val_greedy": {**metrics, "epoch": epoch + 1}})
        emit("epoch", epoch=epoch + 1, train_loss=state["history"][-1]["train_loss"], metrics=metrics, best=best)
        state["epoch"], state["batch"] = epoch + 1, 0
        checkpoint()
        emit("phase", phase="scst" if state["epoch"] >= cfg.epochs and state["epoch"] < total_epochs else "training")

    emit("phase", phase="saving")
    return _publish(cfg, run_dir, state, time.time() - t_start, len(train_ids), len(val_ids), emit)


def _publish(cfg, run_dir, state, seconds, n_train, n_val, emit) -> Path:
    """Copy the best bundle into models/ under a new name (never over a model in use), with its card."""
    best = run_dir / "best"
    metrics = json.loads((best / "metrics.json").read_text())
    metrics["training"] = {"history": state["history"], "seconds_this_session": round(seconds, 1)}
    (best / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (best / "card.md").write_text(model_card(cfg, state, n_train, n_val, seconds))
    models_dir = Path(cfg.models_dir) if cfg.models_dir else MODELS_DIR
    models_dir.mkdir(parents=True, exist_ok=True)
    target = new_bundle_dir(cfg.model_name or run_dir.name, models_dir)
    tmp = models_dir / f".{target.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(best, tmp)
    os.replace(tmp, target)  # the app lists models/ and must never see a half-copied folder
    emit("done", bundle=str(target), metrics=metrics.get("val_greedy", {}))
    return target


def model_card(cfg: TrainConfig, state: dict, n_train: int, n_val: int, seconds: float) -> str:
    rows = "\n".join(f"| {h['epoch']} | {'SCST' if h.get('scst') else 'XE'} | "
                     f"{h['train_loss'] if h['train_loss'] is None else round(h['train_loss'], 3)} | "
                     f"{h['BLEU-4']} | {h['CIDEr']} |" for h in state["history"])
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in cfg.to_dict().items()
                     if v != getattr(TrainConfig, k, None))
    return f"""# Caption model: {cfg.decoder} decoder on {cfg.backbone}

- Data: `{cfg.data}` ({n_train} training images, {n_val} validation images, split {cfg.train_split}/{cfg.val_split})
- Command: `python -m core.train {flags}`
- Trained: {time.strftime('%Y-%m-%d %H:%M', time.localtime())}, {seconds / 60:.1f} minutes (last session)
- Best validation CIDEr (greedy, Python tokenizer): {state['best_cider']}

| epoch | phase | train loss | BLEU-4 | CIDEr |
|---|---|---|---|---|
{rows}
"""


def _parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m core.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="JSON file of TrainConfig fields (flags given here override it)")
    p.add_argument("--run-dir", help="folder for progress, checkpoints and the model (default: runs/<time>)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--dry-run", action="store_true", help="check the dataset and options, then exit")
    for f in fields(TrainConfig):
        kind = {bool: lambda s: s.lower() in ("1", "true", "yes", "on"), int: int, float: float}.get(type(f.default), str)
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None, help=f"default: {f.default}")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    values = json.loads(Path(args.config).read_text()) if args.config else {}
    values.update({f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None})
    cfg = TrainConfig.from_dict(values)
    run_dir = Path(args.run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    if args.dry_run:
        from .data import inspect_dataset

        info = inspect_dataset(cfg.data, (cfg.train_split, cfg.val_split))
        print(json.dumps({"config": cfg.to_dict(), "run_dir": str(run_dir), "dataset": {
            "format": info.format, "splits": info.splits, "captions": info.n_captions, "problems": info.problems}},
            indent=2))
        return 0 if info.ok else 1
    try:
        bundle = run(cfg, run_dir, resume=args.resume, listeners=[lambda e: print(json.dumps(e), flush=True)])
    except Exception as e:
        print(f"training failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0 if bundle or (run_dir / "checkpoint.safetensors").exists() else 1


if __name__ == "__main__":
    sys.exit(main())
