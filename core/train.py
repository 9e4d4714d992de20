"""Training: `python -m core.train --data DATASET [--flags]`, or `run(TrainConfig(...), run_dir)`.

With a frozen backbone (the default) every image is encoded once into the feature cache and the epochs
train the decoder alone. Cross-entropy epochs come first, then optional self-critical sequence training
(SCST: CIDEr reward against the greedy caption). The shape follows timm's train.py: `run` calls `prepare`,
then `train_epoch` / `scst_epoch` and `validate` per epoch, then publishes the best epoch's bundle.
Progress is one JSON event per line in <run>/progress.jsonl (core.runs; schema: docs/core_api.md). A STOP
file in the run folder or SIGTERM checkpoints and exits; --resume continues exactly where it left off.
"""
from __future__ import annotations

import sys

if __name__ == "__main__":  # a job's trainer takes the job lock before the slow imports: its starter waits on it
    from core.jobs import JobError, hold_job_lock

    try:
        hold_job_lock()
    except JobError as e:
        sys.exit(f"training not started: {e}")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import zlib  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from . import runs  # noqa: E402
from .backbones import get_spec  # noqa: E402
from .bundle import publish_bundle, save_bundle  # noqa: E402
from .checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from .config import ConfigError, ModelConfig, TrainConfig, flag_fields  # noqa: E402,F401 (TrainConfig: re-export)
from .data import iter_image_batches, load_split  # noqa: E402
from .decode import greedy_decode, sample_captions  # noqa: E402
from .device import adamw, compile_decoder, pick_device, train_precision  # noqa: E402
from .features import FeatureCache, encode_to_cache  # noqa: E402
from .files import atomic_write_json  # noqa: E402
from .metrics import CorpusCider, score_captions  # noqa: E402
from .model import CaptionModel, Encoder  # noqa: E402
from .paths import runs_dir  # noqa: E402
from .vocabulary import PAD, Vocabulary  # noqa: E402

read_progress = runs.read_progress  # the one reader of progress.jsonl lives in core.runs


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
            # fp16 rows converted by torch: faster than numpy's astype, threaded, and half the bytes to a GPU
            return torch.from_numpy(self.array[rows]).to(device).float()  # (B, P, C)
        s = self.spec
        _, images, errors = next(iter_image_batches([self.paths[i] for i in image_ids], s.image_size, s.mean,
                                                    s.std, len(image_ids)))
        if errors:  # fine-tuning has no cache pass to weed these out beforehand; say which file, plainly
            i, msg = next(iter(errors.items()))
            raise ValueError(f"cannot fine-tune on {self.paths[image_ids[i]]}: {msg}; remove or fix that file")
        return self.encoder(images.to(device))  # (B, P, C)


@dataclass
class Session:
    """Everything the epochs share, built once by `prepare`."""

    cfg: TrainConfig
    run_dir: Path
    emit: Callable
    should_stop: runs.Stopper
    device: torch.device
    vocab: Vocabulary
    model: CaptionModel
    source: FeatureSource
    items: list  # training images, then validation images
    train_ids: list[int]
    val_ids: list[int]
    samples: list[tuple[int, list[int]]]  # (image index, caption tokens) for cross-entropy
    optimizer: torch.optim.Optimizer
    params: list
    total_steps: int
    xe_steps: int  # the cross-entropy steps, over which the learning rate decays
    autocast: Callable
    scaler: torch.amp.GradScaler
    cider: CorpusCider | None
    state: dict = field(default_factory=lambda: {"epoch": 0, "batch": 0, "global_step": 0, "best_cider": -1.0,
                                                 "history": []})
    t_session: float = field(default_factory=time.time)
    steps_session: int = 0
    last_checkpoint: float = field(default_factory=time.monotonic)

    def checkpoint(self) -> None:
        path = self.run_dir / runs.CHECKPOINT
        save_checkpoint(path, self.model, self.optimizer, {**self.state, "config": self.cfg.to_dict()})
        self.last_checkpoint = time.monotonic()
        self.emit(runs.SAVED, path=str(path), epoch=self.state["epoch"] + 1, step=self.state["global_step"])

    def stop(self, checkpoint: bool = True) -> None:
        if checkpoint:
            self.checkpoint()
        self.emit(runs.STOPPED, reason=self.should_stop.reason)
        self.should_stop.consume()


def _load_data(cfg: TrainConfig, emit) -> tuple[list, list]:
    train_items, missing_train = load_split(cfg.data, cfg.train_split)
    val_items, missing_val = load_split(cfg.data, cfg.val_split)
    train_items, val_items = _stable_subset(train_items, cfg.subset), _stable_subset(val_items, cfg.subset)
    val_items = val_items[: cfg.val_images]
    if not train_items or not val_items:
        raise ValueError(f"{cfg.data} has no usable images in split {cfg.train_split!r} or {cfg.val_split!r}")
    emit(runs.LOG_EVENT, message=f"{len(train_items)} training and {len(val_items)} validation images "
                                 f"({missing_train + missing_val} listed but missing)")
    return train_items, val_items


def _features(cfg: TrainConfig, model, items, device, emit, should_stop) -> tuple[FeatureSource, list[int]] | None:
    """Where each image's features come from, and the images that have them (None: stopped while encoding)."""
    paths, spec = [it.path for it in items], get_spec(cfg.model.backbone)
    if cfg.model.fine_tune:
        return FeatureSource(encoder=model.encoder, paths=paths, spec=spec), list(range(len(items)))
    emit(runs.PHASE, phase="encoding")
    grid = (spec.image_size // 32, spec.image_size // 32)
    layout = "grid" if cfg.model.decoder == "attention" else "pooled"
    cache = FeatureCache(Path(cfg.cache_dir), cfg.model.backbone, layout, grid)
    encoder = Encoder(cfg.model.backbone, pretrained=True).to(device)
    rows = encode_to_cache(encoder, cfg.model.backbone, paths, cache, device, cfg.encode_batch_size,
                           on_progress=lambda p: emit(runs.ENCODE, **p), should_stop=should_stop)
    if should_stop():
        return None
    return FeatureSource(cache_array=cache.array(), rows=rows), [i for i, r in enumerate(rows) if r is not None]


def prepare(cfg: TrainConfig, run_dir: Path, resume: bool, emit, should_stop: runs.Stopper) -> Session | None:
    """Data, vocabulary, model, features, optimizer and (on resume) the checkpoint's state; None when stopped."""
    ckpt_path = run_dir / runs.CHECKPOINT
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    emit(runs.PHASE, phase="loading")
    train_items, val_items = _load_data(cfg, emit)
    if resume:
        vocab = Vocabulary.load(run_dir / runs.VOCAB)
    else:
        vocab = Vocabulary.build((c for it in train_items for c in it.captions), cfg.min_word_count)
        vocab.save(run_dir / runs.VOCAB)
    mcfg = ModelConfig.from_dict({**cfg.model.to_dict(), "vocab_size": len(vocab)})
    model = CaptionModel(mcfg, with_encoder=mcfg.fine_tune, pretrained=True).to(device)
    if should_stop():
        return None
    items = train_items + val_items
    found = _features(cfg, model, items, device, emit, should_stop)
    if found is None:
        return None
    source, usable = found
    usable_set = set(usable)
    train_ids = [i for i in range(len(train_items)) if i in usable_set]
    val_ids = [i for i in range(len(train_items), len(items)) if i in usable_set]
    samples = [(i, vocab.encode(c, mcfg.max_len)) for i in train_ids for c in items[i].captions]

    xe_steps = cfg.epochs * math.ceil(len(samples) / cfg.batch_size)
    total_steps = xe_steps + cfg.scst_epochs * math.ceil(len(train_ids) / cfg.scst_batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, device, lr=cfg.lr, weight_decay=cfg.weight_decay)  # fused where PyTorch has it
    if cfg.compile:  # minutes of compilation before the first step; see README "Speed"
        compile_decoder(model.decoder)
    amp = train_precision(device, cfg.precision)  # bf16/fp16 autocast where the hardware runs it, fp32 weights
    autocast, scaler = amp.autocast, amp.scaler
    emit(runs.LOG_EVENT, message=f"training in {amp.label} on {device.type} ({amp.reason})")
    cider = CorpusCider([it.captions for it in train_items]) if cfg.scst_epochs else None
    s = Session(cfg, run_dir, emit, should_stop, device, vocab, model, source, items, train_ids, val_ids, samples,
                optimizer, params, total_steps, xe_steps, autocast, scaler, cider)
    if resume:  # the optimizer's hyperparameters (SCST's included) come back with its state
        meta = load_checkpoint(ckpt_path, model, s.optimizer)
        s.state.update({k: meta[k] for k in s.state})
        emit(runs.RESUMED, epoch=s.state["epoch"] + 1, batch=s.state["batch"], step=s.state["global_step"])
    return s


def _step(s: Session, loss: torch.Tensor, lr: float) -> None:
    for g in s.optimizer.param_groups:
        g["lr"] = lr
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    s.scaler.unscale_(s.optimizer)
    torch.nn.utils.clip_grad_norm_(s.params, s.cfg.grad_clip)
    s.scaler.step(s.optimizer)
    s.scaler.update()


def _after_step(s: Session, epoch: int, b: int, n_batches: int, per: int, losses: list, lr: float,
                scst: bool) -> bool:
    """Count, report, and checkpoint (every `checkpoint_every` steps or `checkpoint_minutes`); True to stop."""
    cfg, state = s.cfg, s.state
    state["global_step"] += 1
    state["batch"] = b + 1
    s.steps_session += 1
    if state["global_step"] % cfg.log_every == 0 or b + 1 == n_batches:
        elapsed = time.time() - s.t_session
        s.emit(runs.STEP, epoch=epoch + 1, epochs=cfg.epochs + cfg.scst_epochs, step=state["global_step"],
               total_steps=s.total_steps, batch=b + 1, batches=n_batches,
               loss=round(float(np.mean(losses[-cfg.log_every:])), 4), lr=lr, scst=scst,
               images_per_s=round(s.steps_session * per / max(elapsed, 1e-6), 1),
               eta_s=round((s.total_steps - state["global_step"]) * elapsed / s.steps_session, 1))
    if s.should_stop():
        s.stop()
        return True
    if (state["global_step"] % cfg.checkpoint_every == 0
            or time.monotonic() - s.last_checkpoint >= cfg.checkpoint_minutes * 60):
        s.checkpoint()
    return False


def _order(s: Session, n_items: int, epoch: int) -> list[int]:
    """The epoch's shuffle, a pure function of seed and epoch, so a resumed epoch continues the same order."""
    return torch.randperm(n_items, generator=torch.Generator().manual_seed(s.cfg.seed * 1000 + epoch)).tolist()


def train_epoch(s: Session, epoch: int) -> list[float] | None:
    """One cross-entropy epoch from the saved batch on; -> its losses, or None when stopped."""
    cfg, per = s.cfg, s.cfg.batch_size
    perm, n_batches, losses = _order(s, len(s.samples), epoch), math.ceil(len(s.samples) / per), []
    alpha_c = cfg.alpha_c if cfg.model.decoder == "attention" else 0.0
    for b in range(s.state["batch"], n_batches):
        chunk = [s.samples[k] for k in perm[b * per:(b + 1) * per]]
        lr = lr_at(s.state["global_step"], s.xe_steps, cfg.lr, cfg.warmup_steps)
        with s.autocast():
            caps = pad_captions([tokens for _, tokens in chunk]).to(s.device)  # (B, L)
            loss = caption_loss(s.model, s.source([i for i, _ in chunk], s.device), caps, cfg.label_smoothing,
                                alpha_c)
        _step(s, loss, lr)
        losses.append(loss.item())
        if _after_step(s, epoch, b, n_batches, per, losses, lr, scst=False):
            return None
    return losses


def _scst_loss(model, feats, refs, cider, vocab, cfg):
    """Self-critical loss for a batch of images: reward = CIDEr(sample) - CIDEr(greedy caption)."""
    max_len, n = cfg.model.max_len, cfg.scst_samples
    model.eval()
    greedy, _ = greedy_decode(model.decoder, feats, max_len)  # (B, T)
    model.train()
    tokens, logps, mask = sample_captions(model.decoder, feats, max_len, repeats=n)  # (B*n, T) each
    samples = [vocab.decode(t) for t in tokens.tolist()]
    baseline = cider([vocab.decode(t) for t in greedy.tolist()], refs)  # (B,)
    reward = cider(samples, [r for r in refs for _ in range(n)]) - np.repeat(baseline, n)  # (B*n,)
    reward_t = torch.from_numpy(reward).float().to(feats.device).unsqueeze(1)  # (B*n, 1)
    return -(reward_t * logps * mask).sum() / mask.sum()


def scst_epoch(s: Session, epoch: int) -> list[float] | None:
    """One self-critical epoch (CIDEr-D reward, greedy baseline) from the saved batch on; None when stopped."""
    cfg, per = s.cfg, s.cfg.scst_batch_size
    if epoch == cfg.epochs and s.state["batch"] == 0:
        s.optimizer = adamw(s.params, s.device, lr=cfg.scst_lr, weight_decay=0.0)  # fresh moments for RL
        s.emit(runs.PHASE, phase="scst")
    perm, n_batches, losses = _order(s, len(s.train_ids), epoch), math.ceil(len(s.train_ids) / per), []
    for b in range(s.state["batch"], n_batches):
        ids = [s.train_ids[k] for k in perm[b * per:(b + 1) * per]]
        with s.autocast():
            loss = _scst_loss(s.model, s.source(ids, s.device), [s.items[i].captions for i in ids], s.cider,
                              s.vocab, cfg)
        _step(s, loss, cfg.scst_lr)
        losses.append(loss.item())
        if _after_step(s, epoch, b, n_batches, per, losses, cfg.scst_lr, scst=True):
            return None
    return losses


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


def end_epoch(s: Session, epoch: int, losses: list[float]) -> None:
    """Validate, keep the best epoch's bundle, checkpoint at the epoch's end."""
    cfg, state = s.cfg, s.state
    s.emit(runs.PHASE, phase="validating")
    texts = {i: s.vocab.decode(seq)
             for i, seq in validate(s.model, s.source, s.val_ids, s.device, cfg.model.max_len).items()}
    refs = {i: s.items[i].captions for i in texts}
    metrics = score_captions({str(i): refs[i] for i in texts}, {str(i): t for i, t in texts.items()}, fast=True)
    metrics = {k: metrics[k] for k in ("BLEU-4", "CIDEr")}
    metrics["distinct_captions"] = len(set(texts.values()))
    s.emit(runs.SAMPLE, epoch=epoch + 1, samples=[
        {"image": str(s.items[i].path), "caption": texts[i], "references": refs[i][:3]} for i in s.val_ids[:4]])
    best = metrics["CIDEr"] > state["best_cider"]
    scst = epoch >= cfg.epochs
    state["history"].append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
                             "scst": scst, **metrics})
    if best:
        state["best_cider"] = metrics["CIDEr"]
        save_bundle(s.run_dir / runs.BEST, s.model, s.vocab, metrics={"val_greedy": {**metrics, "epoch": epoch + 1}})
    s.emit(runs.EPOCH, epoch=epoch + 1, train_loss=state["history"][-1]["train_loss"], metrics=metrics, best=best)
    state["epoch"], state["batch"] = epoch + 1, 0
    s.checkpoint()
    more_scst = cfg.epochs <= state["epoch"] < cfg.epochs + cfg.scst_epochs
    s.emit(runs.PHASE, phase="scst" if more_scst else "training")


def run(cfg: TrainConfig, run_dir: Path, resume: bool = False, listeners=()) -> Path | None:
    """Train; -> the new model folder, or None when stopped early (resume later)."""
    cfg = cfg.resolved().check()
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    should_stop = runs.Stopper(run_dir)  # before the first event: it tells a fresh STOP from an earlier one
    emit = runs.Reporter(run_dir, listeners)
    try:
        return _run(cfg, run_dir, resume, emit, should_stop)
    except Exception as e:
        emit(runs.ERROR, message=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        raise


def _run(cfg: TrainConfig, run_dir: Path, resume: bool, emit, should_stop: runs.Stopper) -> Path | None:
    t_start = time.time()
    left = runs.clean_partial_writes(run_dir)  # a kill between a temporary write and its rename
    resume = resume and (run_dir / runs.CHECKPOINT).exists()
    atomic_write_json(run_dir / runs.CONFIG, cfg.to_dict())
    emit(runs.START, config=cfg.to_dict(), pid=os.getpid(), resumed=resume)
    if left:
        emit(runs.LOG_EVENT, message=f"removed {len(left)} half-written file(s) of a killed run: "
                                     + ", ".join(p.name for p in left))
    s = prepare(cfg, run_dir, resume, emit, should_stop)
    if s is None:
        emit(runs.STOPPED, reason=should_stop.reason)
        should_stop.consume()
        return None
    s.model.train()
    emit(runs.PHASE, phase="training")
    while s.state["epoch"] < cfg.epochs + cfg.scst_epochs:
        epoch = s.state["epoch"]
        losses = scst_epoch(s, epoch) if epoch >= cfg.epochs else train_epoch(s, epoch)
        if losses is None:
            return None
        end_epoch(s, epoch, losses)
    emit(runs.PHASE, phase="saving")
    seconds = time.time() - t_start
    target = publish_bundle(
        run_dir / runs.BEST, cfg.model_name or run_dir.name, Path(cfg.models_dir),
        metrics={"training": {"history": s.state["history"], "seconds_this_session": round(seconds, 1)}},
        card=model_card(cfg, s.state, len(s.train_ids), len(s.val_ids), seconds))
    best_metrics = json.loads((target / "metrics.json").read_text(encoding="utf-8")).get("val_greedy", {})
    emit(runs.DONE, bundle=str(target), metrics=best_metrics)
    return target


def _changed_flags(cfg: TrainConfig) -> str:
    flat = {**{k: v for k, v in cfg.to_dict().items() if k != "model"}, **cfg.model.to_dict()}
    defaults = {name: default for name, default, _ in flag_fields()}
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in flat.items() if k in defaults and v != defaults[k])


def model_card(cfg: TrainConfig, state: dict, n_train: int, n_val: int, seconds: float) -> str:
    rows = "\n".join(f"| {h['epoch']} | {'SCST' if h.get('scst') else 'XE'} | "
                     f"{h['train_loss'] if h['train_loss'] is None else round(h['train_loss'], 3)} | "
                     f"{h['BLEU-4']} | {h['CIDEr']} |" for h in state["history"])
    return f"""# Caption model: {cfg.model.decoder} decoder on {cfg.model.backbone}

- Data: `{cfg.data}` ({n_train} training images, {n_val} validation images, split {cfg.train_split}/{cfg.val_split})
- Command: `python -m core.train {_changed_flags(cfg)}`
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
    for name, default, _ in flag_fields():
        kind = {bool: lambda s: s.lower() in ("1", "true", "yes", "on"), int: int, float: float}.get(type(default), str)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=f"default: {default}")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    try:
        values = json.loads(Path(args.config).read_text(encoding="utf-8")) if args.config else {}
        values.update({name: getattr(args, name) for name, _, _ in flag_fields() if getattr(args, name) is not None})
        cfg = TrainConfig.from_dict(values).resolved().check()
    except (OSError, ConfigError, ValueError) as e:
        print(f"training not started: {e}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir) if args.run_dir else runs_dir() / time.strftime("%Y%m%d-%H%M%S")
    if args.dry_run:
        from .data import inspect_dataset

        info = inspect_dataset(cfg.data, (cfg.train_split, cfg.val_split))
        print(json.dumps({"config": cfg.to_dict(), "run_dir": str(run_dir.resolve()), "dataset": {
            "format": info.format, "splits": info.splits, "captions": info.n_captions, "problems": info.problems}},
            indent=2))
        return 0 if info.ok else 1
    finished = [e for e in runs.read_progress(run_dir) if e.get("event") == runs.DONE]
    if args.resume and finished:  # resuming would publish the same model a second time
        print(f"this run has finished; its model is {finished[-1].get('bundle')}", file=sys.stderr)
        return 0
    try:
        bundle = run(cfg, run_dir, resume=args.resume, listeners=[lambda e: print(json.dumps(e), flush=True)])
    except Exception as e:
        print(f"training failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0 if bundle or (run_dir / runs.CHECKPOINT).exists() else 1


if __name__ == "__main__":
    sys.exit(main())
