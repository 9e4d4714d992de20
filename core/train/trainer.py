"""Training: `python -m core.train --data DATASET [--flags]`, or `run(TrainConfig(...), run_dir)`.

With a frozen backbone (the default) every image is encoded once into the feature cache and the epochs
train the decoder alone. Cross-entropy epochs come first, then optional self-critical sequence training
(SCST: CIDEr reward against the greedy caption). The shape follows timm's train.py: `run` calls `prepare`,
then `train_epoch` / `scst_epoch` and `validate` per epoch, then publishes the best epoch's bundle.
Progress is one JSON event per line in <run>/progress.jsonl (core.runs.folder; schema: docs/core_api.md). A STOP
file in the run folder or SIGTERM checkpoints and exits; --resume continues exactly where it left off.
Under `torchrun --nproc-per-node N -m core.train ...` the same code runs as N ranks (core.nn.distributed):
each encodes its share of the images and trains on its share of every batch through DistributedDataParallel;
rank 0 alone writes events, checkpoints and the model.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from core.base.config import (
    GRID_DECODERS,
    ConfigError,
    ModelConfig,
    TrainConfig,
    flag_fields,
)
from core.base.files import atomic_write_json
from core.base.paths import TEST_FAIL_AT_ENV, runs_dir
from core.bundle.store import BundleError, publish_bundle, read_config, read_vocab
from core.data.datasets import (
    load_split,
    missing_report,
    overlap_note,
    shared_images,
    split_label,
)
from core.caption.tags import noun_probs
from core.data.text_only import TagNoise, caption_nouns, captions_text, excluded_names
from core.data.vocabulary import PAD, TokenizedCaptions, Vocabulary
from core.evaluate.metrics import score_captions
from core.nn import distributed as dist
from core.nn.backbones import get_spec
from core.nn.batches import iter_image_batches
from core.nn.decode import greedy_decode
from core.nn.features import FeatureCache, encode_to_cache
from core.nn.model import CaptionModel, Encoder, with_tag_row
from core.nn.precision import adamw, compile_decoder, pick_device, train_precision
from core.nn.weights import save_bundle
from core.runs import folder as runs
from core.train.augment import AUGMENT_VERSION, apply_view, epoch_views, swap_table
from core.train.checkpoint import load_checkpoint, save_checkpoint
from core.train.diskspace import check_cache_fits
from core.train.scst import CiderReward, scst_step

read_progress = runs.read_progress  # the one reader of progress.jsonl lives in core.runs.folder


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def caption_loss(model, feats, captions, label_smoothing=0.0, alpha_c=0.0, image_index=None) -> torch.Tensor:
    """The one training/validation step: teacher-forced cross-entropy (+ attention regulariser).
    image_index (B,) (optional): caption i is of image image_index[i] of feats (U, P, C), each image once."""
    if image_index is None:
        logits, alphas = model(feats, captions)  # (B, L-1, V), (B, L-1, P) or None
    else:
        logits, alphas = model(feats, captions, image_index=image_index)
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


@dataclass
class Samples:
    """The cross-entropy samples as two arrays, not 591,000 Python lists: sample k is caption tokens[k]
    (PAD-padded, [START, ..., END]) of image index image[k]."""

    image: np.ndarray  # (N,) int32
    tokens: np.ndarray  # (N, max_len + 2) int32

    def __len__(self) -> int:
        return len(self.image)

    def batch(self, positions) -> tuple[list[int], torch.Tensor]:
        """-> (image indices, captions (B, L) trimmed to the batch's longest) of the samples at `positions`."""
        tokens = self.tokens[positions]  # (B, max_len + 2)
        length = int((tokens != PAD).sum(1).max())
        return self.image[positions].tolist(), torch.from_numpy(tokens[:, :length].astype(np.int64))  # (B, L)

    def images(self) -> np.ndarray:
        """The image indices that have samples, ascending (samples are stored image by image)."""
        return np.unique(self.image)

    def of_images(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> the positions of every caption of `images`, image by image, and for each the image's place in
        `images` (the decoder's image_index)."""
        lo, hi = np.searchsorted(self.image, images, "left"), np.searchsorted(self.image, images, "right")
        positions = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])
        return positions, np.repeat(np.arange(len(images)), hi - lo)


def _stable_subset(items, fraction):
    if fraction >= 1.0:
        return items
    keep = max(1, math.ceil(len(items) * fraction))
    chosen = sorted(items, key=lambda it: zlib.crc32(it.path.name.encode()))[:keep]
    return sorted(chosen, key=lambda it: it.path.name)


@dataclass
class TextSamples:
    """Captions without photos (TrainConfig.text_data), added to every cross-entropy step beside the photos'."""

    tokens: np.ndarray  # (M, max_len + 2) int32, as Samples.tokens
    nouns: list[list[int]]  # each caption's plain nouns, its subject first: what its made-up tags are drawn from
    share: float  # of a step's captions

    def add_to(self, feats: torch.Tensor, caps: torch.Tensor, index: torch.Tensor | None,
               seed: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A step's photo rows feats (U, P + 1, C), caps (B, L), index (B,) or None -> the same with text captions
        added: their feats rows hold no photo (the grid zeros, flagged) and tags made from their nouns."""
        n = round(caps.size(0) * self.share / (1 - self.share))
        if n == 0:
            return feats, caps, index
        rng = np.random.default_rng(seed)  # the step's own draw: a resumed run adds the same captions
        pick = rng.choice(len(self.tokens), size=min(n, len(self.tokens)), replace=False)
        noise = TagNoise.load()
        probs = torch.from_numpy(np.stack([noise.noun_probs(self.nouns[j], rng) for j in pick]))  # (T, N)
        grid = feats.new_zeros(len(pick), feats.size(1) - 1, feats.size(2))  # (T, P, C)
        no_photo = torch.zeros(len(pick), dtype=torch.bool, device=feats.device)
        text_feats = with_tag_row(grid, probs.to(feats.device), no_photo)  # (T, P + 1, C)
        tokens = self.tokens[pick]  # (T, max_len + 2)
        length = max(caps.size(1), int((tokens != PAD).sum(1).max()))
        text_caps = torch.from_numpy(tokens[:, :length].astype(np.int64)).to(caps.device)  # (T, L')
        caps = F.pad(caps, (0, length - caps.size(1)), value=PAD)  # (B, L')
        if index is not None:  # each text caption is its own "image"
            index = torch.cat([index, torch.arange(feats.size(0), feats.size(0) + len(pick), device=index.device)])
        return torch.cat([feats, text_feats]), torch.cat([caps, text_caps]), index


def _tags_of(cfg: TrainConfig, encoder: Encoder) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The tagger of a tag-reading model (cfg.model.tag_slots), else None."""
    if not cfg.model.tag_slots:
        return None
    if not encoder.can_classify:
        raise ValueError(f"tags need the backbone's ImageNet classifier, which {cfg.model.backbone} has not here; "
                         "use an EfficientNet-Lite backbone or tag slots 0")
    return _tagger(encoder)


def _tagger(encoder: Encoder) -> Callable[[torch.Tensor], torch.Tensor]:
    """feats (B, P, C) -> the backbone classifier's noun probabilities (B, N), what a tag-reading decoder reads
    (core.nn.model.with_tag_row); from the grid itself, so cached features need nothing more."""
    def tag(feats: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return noun_probs(encoder.classify(feats.detach()))
    return tag


class FeatureSource:
    """Image features for a batch of image indices: from the cache, or by running the (fine-tuned) encoder; with
    a tagger, the classifier's tag row after the grid (a tag-reading decoder's input)."""

    def __init__(self, cache_array=None, rows=None, encoder=None, paths=None, spec=None, views=(), upper=None,
                 tagger=None):
        self.array, self.rows, self.encoder, self.paths, self.spec = cache_array, rows, encoder, paths, spec
        # fine-tuning the top stages: the cache holds the lower stages' output (B, h*w, C'), upper runs per step
        self.upper = upper
        self.views = list(views)  # (array, rows) of the augmented views 1, 2, ... (core.train.augment); rows: image -> row
        self.tagger = tagger

    def effective_views(self, wanted: np.ndarray) -> np.ndarray:
        """wanted (n_images,) views -> the views to use: view 0 where the wanted one has no row for the image."""
        out = np.asarray(wanted).copy()
        for v, (_, rows) in enumerate(self.views, 1):
            missing = np.array([i >= len(rows) or rows[i] is None for i in range(len(out))])
            out[(out == v) & missing] = 0
        out[out > len(self.views)] = 0
        return out

    def __call__(self, image_ids: list[int], device, views: np.ndarray | None = None) -> torch.Tensor:
        """views (len(image_ids),) (optional): the view of each image (effective_views), 0 the plain photo."""
        feats = self._grid(image_ids, device, views)  # (B, P, C)
        return feats if self.tagger is None else with_tag_row(feats, self.tagger(feats))  # (B, P + 1, C)

    def _grid(self, image_ids: list[int], device, views: np.ndarray | None) -> torch.Tensor:
        if self.encoder is None:
            if views is not None and np.any(views):
                return torch.from_numpy(self._rows(image_ids, np.asarray(views))).to(device).float()  # (B, P, C)
            rows = np.asarray([self.rows[i] for i in image_ids])
            # fp16 rows converted by torch: faster than numpy's astype, threaded, and half the bytes to a GPU
            feats = torch.from_numpy(self.array[rows]).to(device).float()  # (B, P, C), or (B, h*w, C') for upper
            if self.upper is None:
                return feats
            B, P, C = feats.shape
            side = math.isqrt(P)
            x = feats.transpose(1, 2).reshape(B, C, side, side).contiguous(memory_format=torch.channels_last)
            return self.upper(x).flatten(2).transpose(1, 2)  # (B, P', C): the top stages, with gradients
        s = self.spec
        _, images, errors = next(iter_image_batches([self.paths[i] for i in image_ids], s.image_size, s.mean,
                                                    s.std, len(image_ids)))
        if errors:  # fine-tuning has no cache pass to weed these out beforehand; say which file, plainly
            i, msg = next(iter(errors.items()))
            raise ValueError(f"cannot fine-tune on {self.paths[image_ids[i]]}: {msg}; remove or fix that file")
        return self.encoder(images.to(device))  # (B, P, C)

    def _rows(self, image_ids, views) -> np.ndarray:
        """(B, P, C) fp16: image_ids[k] at view views[k], each view's cache read once."""
        out = np.empty((len(image_ids), *self.array.shape[1:]), dtype=np.float16)
        for v in np.unique(views):
            array, rows = (self.array, self.rows) if v == 0 else self.views[v - 1]
            sel = np.flatnonzero(views == v)
            out[sel] = array[np.asarray([rows[image_ids[k]] for k in sel])]
        return out


def _new_state() -> dict:
    """Where training is, at the start: the counters a checkpoint saves beside the weights (its format's keys)."""
    return {"epoch": 0, "batch": 0, "global_step": 0, "best_cider": -1.0, "history": []}


@dataclass
class TrainData:
    """What the epochs learn from: fixed for the run once the features are there."""

    vocab: Vocabulary
    items: list  # training images, then validation images
    train_ids: list[int]  # the indices in `items` of the images that have features
    val_ids: list[int]
    samples: Samples  # (image index, caption tokens) for cross-entropy
    source: FeatureSource
    cider: CiderReward | None  # SCST's reward, with scst_epochs
    swap: torch.Tensor | None  # (V,) token -> its mirror-image token (core.train.augment), with --views > 1
    text: TextSamples | None = None  # captions without photos, with text_data


@dataclass
class Pace:
    """This session's clock, not saved: images per second, the ETA, and when a timed checkpoint is due."""

    started: float = field(default_factory=time.time)
    steps: int = 0  # the steps taken in this session
    last_checkpoint: float = field(default_factory=time.monotonic)


@dataclass
class Session:
    """Everything the epochs share, built once by `prepare`."""

    # the run, fixed
    cfg: TrainConfig
    run_dir: Path
    emit: Callable
    should_stop: runs.Stopper
    device: torch.device
    data: TrainData
    # what a step computes with and updates
    model: CaptionModel
    net: torch.nn.Module  # what cross-entropy steps call: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer  # a fresh one (new moments) when SCST starts
    params: list  # what the optimizer trains, for clipping and for averaging gradients by hand
    autocast: Callable
    scaler: torch.amp.GradScaler
    xe_steps: int  # the cross-entropy steps, over which the learning rate decays
    total_steps: int
    # where training is: `state` is saved in every checkpoint and restored on resume, `pace` is not
    state: dict = field(default_factory=_new_state)
    pace: Pace = field(default_factory=Pace)

    def checkpoint(self) -> None:
        """Every rank calls this at the same step (their random states are gathered); rank 0 writes."""
        path = self.run_dir / runs.CHECKPOINT
        rng = _gathered_rng(self.device) if dist.active() else None
        if dist.is_main():
            save_checkpoint(path, self.model, self.optimizer,
                            {**self.state, "config": self.cfg.to_dict(), "world_size": dist.world()}, rng)
        self.pace.last_checkpoint = time.monotonic()
        self.emit(runs.SAVED, path=str(path), epoch=self.state["epoch"] + 1, step=self.state["global_step"])

    def stop(self, checkpoint: bool = True) -> None:
        if checkpoint:
            self.checkpoint()
        self.emit(runs.STOPPED, reason=self.should_stop.reason)
        self.should_stop.consume()


def _gathered_rng(device) -> dict[str, torch.Tensor]:
    """Every rank's random state (dropout, SCST sampling), so that each rank resumes with its own."""
    out = {}
    for r, state in enumerate(dist.all_gather_rows(torch.get_rng_state().unsqueeze(0))):  # (1, S) per rank
        out[f"rng/rank/{r}/torch"] = state[0]
    if device.type == "cuda":
        for r, state in enumerate(dist.all_gather_rows(torch.cuda.get_rng_state(device).to(device).unsqueeze(0))):
            out[f"rng/rank/{r}/cuda"] = state[0]
    out["rng/torch"] = out["rng/rank/0/torch"].clone()  # what a one-process resume takes
    return out


def _agreed_stop(should_stop: runs.Stopper, values=()) -> tuple[bool, list[float]]:
    """Whether any rank was asked to stop (then all stop here, with its reason), and `values` summed."""
    should_stop()  # reads the STOP file
    reason, summed = dist.agree_stop(should_stop.reason, runs.STOP_REASONS, values)
    should_stop.reason = should_stop.reason or reason
    return reason is not None, summed


def _load_data(cfg: TrainConfig, emit) -> tuple[list, list]:
    train_items, missing_train = load_split(cfg.data, cfg.train_split)
    val_items, missing_val = load_split(cfg.data, cfg.val_split)
    labels = split_label(cfg.data, cfg.train_split), split_label(cfg.data, cfg.val_split)
    problems, notes = [], overlap_note(*labels, shared_images(train_items, val_items), len(val_items))
    for label, items, missing in ((labels[0], train_items, missing_train), (labels[1], val_items, missing_val)):
        p, n = missing_report(label, len(items), missing, cfg.allow_missing)
        problems, notes = problems + p, notes + n
    if problems:
        raise ValueError("; ".join(problems))
    for note in notes:
        emit(runs.LOG_EVENT, message=note)
    train_items, val_items = _stable_subset(train_items, cfg.subset), _stable_subset(val_items, cfg.subset)
    val_items = val_items[: cfg.val_images]
    if not train_items or not val_items:
        raise ValueError(f"{cfg.data} has no usable images in split {cfg.train_split!r} or {cfg.val_split!r}")
    emit(runs.LOG_EVENT, message=f"{len(train_items)} training and {len(val_items)} validation images "
                                 f"({missing_train + missing_val} listed but missing)")
    return train_items, val_items


def _features(cfg: TrainConfig, model, items, device, emit, should_stop,
              n_train: int | None = None) -> tuple[FeatureSource, list[int]] | None:
    """Where each image's features come from, and the images that have them (None: stopped while encoding).
    With `views` > 1 the first n_train images (the training ones) are also encoded at each augmented view."""
    paths, spec = [it.path for it in items], get_spec(cfg.model.backbone)
    if cfg.model.fine_tune and cfg.model.fine_tune_blocks:
        return _lower_features(cfg, model, paths, device, emit, should_stop)
    if cfg.model.fine_tune:
        return (FeatureSource(encoder=model.encoder, paths=paths, spec=spec, tagger=_tags_of(cfg, model.encoder)),
                list(range(len(items))))
    emit(runs.PHASE, phase="encoding")
    grid = (spec.image_size // 32, spec.image_size // 32)
    layout = "grid" if cfg.model.decoder in GRID_DECODERS else "pooled"
    cache = FeatureCache(Path(cfg.cache_dir), cfg.model.backbone, layout, grid)
    check_cache_fits(cache, paths)  # before hours of encoding, not when the disk fills up
    encoder = Encoder(cfg.model.backbone, pretrained=True).to(device)
    # each rank encodes its share (rank 0's progress stands for all); the agreement is the barrier after
    rows = encode_to_cache(encoder, cfg.model.backbone, dist.shard(paths), cache, device, cfg.encode_batch_size,
                           on_progress=lambda p: emit(runs.ENCODE, **p), should_stop=should_stop)
    if _agreed_stop(should_stop)[0]:
        return None
    if dist.active():  # the other ranks' rows are in the cache now
        cache.refresh()
        rows = cache.rows(paths)
    views = []
    train_paths = paths[: len(paths) if n_train is None else n_train]
    for v in range(1, cfg.views):
        emit(runs.LOG_EVENT, message=f"encoding augmented view {v} of {cfg.views - 1} ({len(train_paths)} photos)")
        vcache = FeatureCache(Path(cfg.cache_dir), cfg.model.backbone, layout, grid, variant=f"{AUGMENT_VERSION}/view{v}")
        check_cache_fits(vcache, train_paths)
        vrows = encode_to_cache(encoder, cfg.model.backbone, dist.shard(train_paths), vcache, device,
                                cfg.encode_batch_size, on_progress=lambda p: emit(runs.ENCODE, **p),
                                should_stop=should_stop,
                                transform=lambda images, ps, v=v: apply_view(images, [p.name for p in ps], v))
        if _agreed_stop(should_stop)[0]:
            return None
        if dist.active():
            vcache.refresh()
            vrows = vcache.rows(train_paths)
        views.append((vcache.array(), vrows))
    return (FeatureSource(cache_array=cache.array(), rows=rows, views=views, tagger=_tags_of(cfg, encoder)),
            [i for i, r in enumerate(rows) if r is not None])


def _lower_features(cfg: TrainConfig, model, paths, device, emit, should_stop):
    """Fine-tuning the top `fine_tune_blocks` stages: the frozen stages below them run once per photo into a cache
    of their output; each step runs only the top stages (FeatureSource.upper) on it."""
    top = cfg.model.fine_tune_blocks
    lower, upper = model.encoder.split(top)
    spec = get_spec(cfg.model.backbone)
    model.encoder.eval()  # BatchNorm in eval mode, even for this probe: in train mode it updates ImageNet's statistics
    with torch.no_grad():
        probe = lower(torch.zeros(1, 3, spec.image_size, spec.image_size, device=device))  # (1, C', h, w)
    channels, grid = probe.size(1), (probe.size(2), probe.size(3))

    class Lower(torch.nn.Module):  # images -> (B, h*w, C'), what encode_to_cache stores (in eval mode: BN kept)
        def __init__(self):
            super().__init__()
            self.lower = lower

        def forward(self, images):
            return self.lower(images.contiguous(memory_format=torch.channels_last)).flatten(2).transpose(1, 2)

    emit(runs.PHASE, phase="encoding")
    cache = FeatureCache(Path(cfg.cache_dir), cfg.model.backbone, "grid", grid, variant=f"below-top-{top}",
                         channels=channels)
    check_cache_fits(cache, paths)
    rows = encode_to_cache(Lower(), cfg.model.backbone, dist.shard(paths), cache, device, cfg.encode_batch_size,
                           on_progress=lambda p: emit(runs.ENCODE, **p), should_stop=should_stop)
    if _agreed_stop(should_stop)[0]:
        return None
    if dist.active():
        cache.refresh()
        rows = cache.rows(paths)
    return (FeatureSource(cache_array=cache.array(), rows=rows, upper=upper, tagger=_tags_of(cfg, model.encoder)),
            [i for i, r in enumerate(rows) if r is not None])


def param_groups(model: CaptionModel, cfg: TrainConfig) -> list[dict]:
    """What the optimizer trains: the decoder at the run's rate; with fine_tune_blocks only the backbone's top stages,
    at fine_tune_lr_scale of it (Show-Attend-Tell's recipe: a rate about 10x lower), the stages below frozen."""
    decoder = [p for n, p in model.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
    if not (cfg.model.fine_tune and model.encoder is not None):
        return [{"params": decoder}]
    if not cfg.model.fine_tune_blocks:
        return [{"params": decoder + [p for p in model.encoder.parameters() if p.requires_grad]}]
    _, upper = model.encoder.split(cfg.model.fine_tune_blocks)
    top = {id(p) for p in upper.parameters()}
    for p in model.encoder.parameters():
        p.requires_grad_(id(p) in top)  # the lower stages' weights stay bit-equal (their output is cached)
    return [{"params": decoder}, {"params": list(upper.parameters()), "lr_scale": cfg.fine_tune_lr_scale}]


def _require_readable_images(cfg: TrainConfig, n_train: int, usable_train: int, n_val: int, usable_val: int) -> None:
    """A split none of whose images could be read (all corrupt or not images at all) stops the run in plain words,
    before an empty epoch fails deep inside the scorer ("max() arg is an empty sequence")."""
    for split, listed, usable in ((cfg.train_split, n_train, usable_train), (cfg.val_split, n_val, usable_val)):
        if listed and not usable:
            raise ValueError(f"none of the {listed:,} images of the {split} split could be read as an image (damaged "
                             f"or not images at all); the log names each one. Replace them and start again.")


ARCHITECTURE_KEYS = ("backbone", "decoder", "embed_dim", "hidden_dim", "attention_dim", "feature_proj_dim",
                     "fine_tune", "num_layers", "num_heads", "fine_tune_blocks")


def with_init_architecture(cfg: TrainConfig) -> TrainConfig:
    """`init_from` set: the model's shape (backbone, decoder, widths) is the starting bundle's, whatever the flags."""
    if not cfg.init_from:
        return cfg
    start = read_config(Path(cfg.init_from))  # a BundleError in plain words if it is not a usable model folder
    if start.ensemble > 1:
        raise BundleError(f"{cfg.init_from} is an ensemble of {start.ensemble} decoders; a training run starts from "
                          "one model: give one of the model folders it was joined from")
    d = cfg.to_dict()
    # fine-tuning a frozen-backbone model's top stages: the flags' fine-tuning, the starting model's shape otherwise
    keep = {"fine_tune", "fine_tune_blocks"} if cfg.model.fine_tune and not start.fine_tune else set()
    d["model"].update({k: getattr(start, k) for k in ARCHITECTURE_KEYS if k not in keep})
    return TrainConfig.from_dict(d)


def _load_initial_weights(model: CaptionModel, folder: Path) -> None:
    """A bundle's weights (fp16 or fp32 on disk) into the model, in fp32."""
    from safetensors.torch import load_file

    weights = load_file(folder / "model.safetensors")
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith("encoder.")]  # a frozen backbone is not in a bundle
    if missing or unexpected:
        raise ValueError(f"{folder} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def prepare(cfg: TrainConfig, run_dir: Path, resume: bool, emit, should_stop: runs.Stopper) -> Session | None:
    """Data, vocabulary, model, features, optimizer and (on resume) the checkpoint's state; None when stopped."""
    device = dist.setup(pick_device(cfg.device))  # under torchrun: joins the other ranks (cuda:LOCAL_RANK)
    torch.manual_seed(cfg.seed)
    emit(runs.PHASE, phase="loading")
    train_items, val_items = _load_data(cfg, emit)
    text = _text_data(cfg, emit)
    # once, for vocabulary and samples: the photos' captions, then the text's
    tokenized = TokenizedCaptions.of([c for it in train_items for c in it.captions] + text)
    vocab = _vocabulary(cfg, run_dir, resume, tokenized)
    model = _build_model(cfg, vocab, device, resume, emit)
    if dist.rank():  # the same initial weights on every rank; different dropout and SCST samples
        torch.manual_seed(cfg.seed + dist.rank())
    if _agreed_stop(should_stop)[0]:
        return None
    found = _features(cfg, model, train_items + val_items, device, emit, should_stop, n_train=len(train_items))
    if found is None:
        return None
    data = _train_data(cfg, vocab, train_items, val_items, tokenized, *found, n_text=len(text))
    del tokenized  # every training caption once more: not kept for the hours of training
    xe_steps, total_steps = _step_counts(cfg, data)
    optimizer, params, autocast, scaler = _optimization(cfg, model, device, emit)
    state = _resumed_state(cfg, run_dir, model, optimizer, emit) if resume else _new_state()
    return Session(cfg, run_dir, emit, should_stop, device, data, model, _network(model, device), optimizer, params,
                   autocast, scaler, xe_steps, total_steps, state)


def _vocabulary(cfg: TrainConfig, run_dir: Path, resume: bool, tokenized: TokenizedCaptions) -> Vocabulary:
    """The run's words: on resume the run's own; with init_from the starting model's, in its order (its output
    layer is indexed by them); else built from the training captions. A new one is saved in the run folder."""
    if resume:
        return Vocabulary.load(run_dir / runs.VOCAB)
    if cfg.init_from:
        vocab = read_vocab(Path(cfg.init_from), read_config(Path(cfg.init_from)))
    else:
        vocab = Vocabulary.build(tokenized, cfg.min_word_count)
    if dist.is_main():
        vocab.save(run_dir / runs.VOCAB)
    return vocab


def _text_data(cfg: TrainConfig, emit) -> list[str]:
    """The captions of cfg.text_data (none without it), less those of the photos cfg.text_exclude names."""
    if not cfg.text_data:
        return []
    exclude = excluded_names(cfg.text_exclude)
    text = captions_text(cfg.text_data, exclude)
    emit(runs.LOG_EVENT, message=f"{len(text)} captions of text without photos from {cfg.text_data}"
                                 + (f" (the captions of {len(exclude)} photos left out)" if exclude else ""))
    return text


def _build_model(cfg: TrainConfig, vocab: Vocabulary, device, resume: bool, emit) -> CaptionModel:
    """The model on `device`: new weights, or init_from's (a resume takes the checkpoint's instead, later)."""
    mcfg = ModelConfig.from_dict({**cfg.model.to_dict(), "vocab_size": len(vocab)})
    model = CaptionModel(mcfg, with_encoder=mcfg.fine_tune, pretrained=True).to(device)
    if mcfg.tag_slots:
        model.set_tag_vocabulary(vocab.stoi)
    if cfg.init_from and not resume:
        _load_initial_weights(model, Path(cfg.init_from))
        emit(runs.LOG_EVENT, message=f"started from the weights of {cfg.init_from}")
    return model


def _train_data(cfg: TrainConfig, vocab: Vocabulary, train_items: list, val_items: list, tokenized: TokenizedCaptions,
                source: FeatureSource, usable: list[int], n_text: int = 0) -> TrainData:
    """The images that have features (a split with none stops the run) and the captions of the training ones."""
    items, n_train, usable_set = train_items + val_items, len(train_items), set(usable)
    train_ids = [i for i in range(n_train) if i in usable_set]
    val_ids = [i for i in range(n_train, len(items)) if i in usable_set]
    _require_readable_images(cfg, n_train, len(train_ids), len(val_items), len(val_ids))
    samples = _samples(train_items, train_ids, vocab, tokenized, cfg.model.max_len)
    cider = CiderReward([it.captions for it in train_items]) if cfg.scst_epochs else None
    swap = swap_table(vocab.stoi, len(vocab)) if cfg.views > 1 else None
    text = _text_samples(cfg, vocab, tokenized, n_text) if n_text else None
    return TrainData(vocab, items, train_ids, val_ids, samples, source, cider, swap, text)


def _text_samples(cfg: TrainConfig, vocab: Vocabulary, tokenized: TokenizedCaptions, n_text: int) -> TextSamples:
    """The last n_text captions of `tokenized` (the text's), encoded, with their nouns."""
    first = len(tokenized) - n_text
    keep = np.arange(first, len(tokenized))
    nouns = [caption_nouns([tokenized.words[w] for w in tokenized.flat[tokenized.offsets[k]:tokenized.offsets[k + 1]]])
             for k in keep]
    return TextSamples(vocab.encode_all(tokenized, keep, cfg.model.max_len), nouns, cfg.text_share)


def _samples(train_items: list, train_ids: list[int], vocab: Vocabulary, tokenized: TokenizedCaptions,
             max_len: int) -> Samples:
    """Every caption of the training images that have features, encoded (`tokenized` holds every training image's
    captions, image by image)."""
    caption_image = np.repeat(np.arange(len(train_items), dtype=np.int32),
                              [len(it.captions) for it in train_items])  # (all captions,)
    usable = np.zeros(len(train_items), dtype=bool)
    usable[train_ids] = True
    keep = np.flatnonzero(usable[caption_image])  # (N,) the captions of images that have features
    return Samples(caption_image[keep], vocab.encode_all(tokenized, keep, max_len))


def _step_counts(cfg: TrainConfig, data: TrainData) -> tuple[int, int]:
    """-> (cross-entropy steps, all steps): the lengths of the two learning-rate schedules, and the ETA's."""
    xe_steps = cfg.epochs * _xe_batches(cfg, *_xe_units(cfg, data.samples)[1:])
    return xe_steps, xe_steps + cfg.scst_epochs * math.ceil(len(data.train_ids) / cfg.scst_batch_size)


def _optimization(cfg: TrainConfig, model: CaptionModel, device, emit) -> tuple[torch.optim.Optimizer, list, Callable,
                                                                                 torch.amp.GradScaler]:
    """-> the optimizer, the parameters it trains, and the precision's autocast and gradient scaler."""
    groups = param_groups(model, cfg)
    params = [p for g in groups for p in g["params"]]
    optimizer = adamw(groups, device, lr=cfg.lr, weight_decay=cfg.weight_decay)  # fused where PyTorch has it
    if cfg.compile:  # minutes of compilation before the first step; see README "Speed"
        compile_decoder(model.decoder)
    amp = train_precision(device, cfg.precision)  # bf16/fp16 autocast where the hardware runs it, fp32 weights
    emit(runs.LOG_EVENT, message=f"training in {amp.label} on {device.type} ({amp.reason})")
    return optimizer, params, amp.autocast, amp.scaler


def _resumed_state(cfg: TrainConfig, run_dir: Path, model: CaptionModel, optimizer: torch.optim.Optimizer,
                   emit) -> dict:
    """The checkpoint's weights, optimizer state and random states into place -> where training was. The
    optimizer's hyperparameters (SCST's included) come back with its state."""
    meta = load_checkpoint(run_dir / runs.CHECKPOINT, model, optimizer, rank=dist.rank() if dist.active() else None)
    before = meta.get("config", {}).get("batch_size", cfg.batch_size)
    if before != cfg.batch_size:  # the saved position counts batches of the earlier size
        raise ValueError(f"this run trained with batch size {before}; resume it with that batch size, "
                         f"not {cfg.batch_size}")
    state = {k: meta[k] for k in _new_state()}
    emit(runs.RESUMED, epoch=state["epoch"] + 1, batch=state["batch"], step=state["global_step"],
         processes=dist.world(), processes_before=meta.get("world_size", 1))
    return state


def _network(model: CaptionModel, device) -> torch.nn.Module:
    """What cross-entropy steps call. DDP averages the gradients of every step over the ranks, in buckets during
    backward. Not when fine-tuning: the encoder runs in FeatureSource, outside DDP's forward; _step averages by
    hand then."""
    if dist.active() and not model.cfg.fine_tune:
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def _xe_batches(cfg: TrainConfig, n_units: int, per: int | None = None) -> int:
    n = math.ceil(n_units / (per or cfg.batch_size))
    return min(n, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else n


def _xe_units(cfg: TrainConfig, samples: Samples) -> tuple[np.ndarray | None, int, int]:
    """What a cross-entropy epoch shuffles: (None, samples, batch_size) captions one by one, or with
    `group_by_image` (the images, their number, images per batch): whole images with all their captions, about
    batch_size captions a batch, so that the decoder computes each image's part once for its 5 captions."""
    if not cfg.group_by_image:
        return None, len(samples), cfg.batch_size
    images = samples.images()
    per = max(1, round(cfg.batch_size * len(images) / max(len(samples), 1)))
    return images, len(images), per


def _step(s: Session, loss: torch.Tensor, lr: float, sync: bool = False) -> None:
    """sync: average the gradients over the ranks here (a backward pass that DDP's forward did not see)."""
    for g in s.optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)  # fine-tuned backbone stages: a fraction of the decoder's rate
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    if sync:
        dist.average_gradients(s.params)
    s.scaler.unscale_(s.optimizer)
    torch.nn.utils.clip_grad_norm_(s.params, s.cfg.grad_clip)
    s.scaler.step(s.optimizer)
    s.scaler.update()


def _after_step(s: Session, epoch: int, b: int, n_batches: int, per: int, losses: list, loss: float, lr: float,
                scst: bool) -> bool:
    """Count, report, and checkpoint (every `checkpoint_every` steps or `checkpoint_minutes`); True to stop.

    One collective per step: the loss averaged over the ranks, any rank's stop request, and rank 0's clock
    deciding a timed checkpoint (the ranks' clocks differ; every rank must take part in a checkpoint)."""
    cfg, state = s.cfg, s.state
    if os.environ.get(TEST_FAIL_AT_ENV) == f"{dist.rank()}:{state['global_step'] + 1}":
        raise RuntimeError(f"failure injected by {TEST_FAIL_AT_ENV} at step {state['global_step'] + 1}")
    timed = dist.is_main() and time.monotonic() - s.pace.last_checkpoint >= cfg.checkpoint_minutes * 60
    stop, (loss_sum, timed) = _agreed_stop(s.should_stop, [loss, timed])
    losses.append(loss_sum / dist.world())
    state["global_step"] += 1
    state["batch"] = b + 1
    s.pace.steps += 1
    if state["global_step"] % cfg.log_every == 0 or b + 1 == n_batches:
        elapsed = time.time() - s.pace.started
        s.emit(runs.STEP, epoch=epoch + 1, epochs=cfg.epochs + cfg.scst_epochs, step=state["global_step"],
               total_steps=s.total_steps, batch=b + 1, batches=n_batches,
               loss=round(float(np.mean(losses[-cfg.log_every:])), 4), lr=lr, scst=scst,
               images_per_s=round(s.pace.steps * per / max(elapsed, 1e-6), 1),
               eta_s=round((s.total_steps - state["global_step"]) * elapsed / s.pace.steps, 1))
    if stop:
        s.stop()
        return True
    if state["global_step"] % cfg.checkpoint_every == 0 or timed:
        s.checkpoint()
    return False


def _order(s: Session, n_items: int, epoch: int) -> list[int]:
    """The epoch's shuffle, a pure function of seed and epoch, so a resumed epoch continues the same order."""
    return torch.randperm(n_items, generator=torch.Generator().manual_seed(s.cfg.seed * 1000 + epoch)).tolist()


def train_epoch(s: Session, epoch: int) -> list[float] | None:
    """One cross-entropy epoch from the saved batch on; -> its losses, or None when stopped."""
    cfg, data = s.cfg, s.data
    images, n_units, per = _xe_units(cfg, data.samples)
    perm, n_batches, losses = _order(s, n_units, epoch), _xe_batches(cfg, n_units, per), []
    alpha_c = cfg.alpha_c if cfg.model.decoder == "attention" else 0.0
    views = None  # the view each image is seen at this epoch (core.train.augment), when there are several
    if cfg.views > 1 and not cfg.model.fine_tune:
        views = data.source.effective_views(epoch_views(len(data.items), cfg.views, cfg.seed, epoch))
    for b in range(s.state["batch"], n_batches):  # batch b: the same samples whatever the number of ranks
        chosen = dist.shard(perm[b * per:(b + 1) * per], fill=True)
        index = None
        if images is None:
            image_ids, caps = data.samples.batch(chosen)  # caps: (B/N, L)
        else:
            mine = images[chosen]  # (U,) this rank's images, each once
            positions, index = data.samples.of_images(mine)
            _, caps = data.samples.batch(positions)  # (B/N, L)
            image_ids, index = mine.tolist(), torch.from_numpy(index).to(s.device)  # index: (B/N,)
        image_views = None
        if views is not None:
            image_views = views[image_ids]  # (U,) or (B,)
            cap_views = image_views if index is None else image_views[index.cpu().numpy()]  # (B/N,)
            flipped = torch.from_numpy(cap_views % 2 == 1)
            caps[flipped] = data.swap[caps[flipped]]  # a mirrored photo's "left" is the caption's "right"
        lr = lr_at(s.state["global_step"], s.xe_steps, cfg.lr, cfg.warmup_steps)
        with s.autocast():  # the features too: a fine-tuned encoder runs here
            feats, caps = data.source(image_ids, s.device, image_views), caps.to(s.device)
            if data.text is not None:  # captions without photos ride along (text_data)
                feats, caps, index = data.text.add_to(feats, caps, index,
                                                      [cfg.seed, dist.rank(), s.state["global_step"]])
            loss = caption_loss(s.net, feats, caps, cfg.label_smoothing, alpha_c, image_index=index)
        _step(s, loss, lr, sync=not isinstance(s.net, DistributedDataParallel))
        if _after_step(s, epoch, b, n_batches, per, losses, loss.item(), lr, scst=False):
            return None
    return losses


def _scst_loss(model, feats, refs, reward, vocab, cfg):
    """Self-critical loss for a batch of images (core.train.scst: CIDEr-D reward, leave-one-out baseline of Luo 2020).

    Samples are drawn without dropout unless `scst_dropout`: with dropout 0.5 on the image features the best policy
    is one that needs no image, and SCST drove the captions towards generic ones (distinct dev captions 765 -> 396
    in 150 steps while dev CIDEr fell; card of models/default).
    """
    model.train(cfg.scst_dropout)
    return scst_step(model.decoder, feats, refs, reward, vocab, cfg.scst_samples, cfg.scst_max_len,
                     cfg.scst_top_p)  # loss, stats


def scst_epoch(s: Session, epoch: int) -> list[float] | None:
    """One self-critical epoch (CIDEr-D reward, leave-one-out baseline) from the saved batch on; None when stopped.

    The learning rate warms up over `scst_warmup_steps`, then follows a cosine to a tenth of `scst_lr` over all
    the SCST steps (the same schedule as cross-entropy, `lr_at`).
    """
    cfg, data, per = s.cfg, s.data, s.cfg.scst_batch_size
    if epoch == cfg.epochs and s.state["batch"] == 0:
        s.optimizer = adamw(param_groups(s.model, cfg), s.device, lr=cfg.scst_lr, weight_decay=0.0)  # fresh moments
        s.emit(runs.PHASE, phase="scst")
    perm, n_batches, losses, stats = _order(s, len(data.train_ids), epoch), math.ceil(len(data.train_ids) / per), [], []
    for b in range(s.state["batch"], n_batches):
        ids = [data.train_ids[k] for k in dist.shard(perm[b * per:(b + 1) * per], fill=True)]
        lr = lr_at(s.state["global_step"] - s.xe_steps, s.total_steps - s.xe_steps, cfg.scst_lr,
                   cfg.scst_warmup_steps)
        with s.autocast():
            loss, batch_stats = _scst_loss(s.model, data.source(ids, s.device), [data.items[i].captions for i in ids],
                                           data.cider, data.vocab, cfg)
        _step(s, loss, lr, sync=True)  # decoding calls the decoder, not DDP's forward: sync by hand
        stats.append(batch_stats)
        if (s.state["global_step"] + 1) % cfg.log_every == 0:  # what the reward does, for the run's log
            recent = {k: round(float(np.mean([x[k] for x in stats[-cfg.log_every:]])), 3) for k in batch_stats}
            s.emit(runs.LOG_EVENT, message="SCST samples: " + ", ".join(f"{k} {v}" for k, v in recent.items()),
                   **{f"scst_{k}": v for k, v in recent.items()})
        if _after_step(s, epoch, b, n_batches, per, losses, loss.item(), lr, scst=True):
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
    train_mode(model)
    return captions


def _gather_captions(captions: dict[int, list[int]], width: int) -> dict[int, list[int]]:
    """Every rank's validation captions {image index: tokens}, on every rank (the shares do not overlap)."""
    if not dist.active():
        return captions
    rows = torch.full((len(captions), 1 + width), PAD, dtype=torch.long)  # (n, 1 + T): image index, tokens
    for k, (i, seq) in enumerate(captions.items()):
        rows[k, 0], rows[k, 1:1 + len(seq)] = i, torch.tensor(seq, dtype=torch.long)
    return {row[0]: row[1:] for part in dist.all_gather_rows(rows) for row in part.tolist()}


def end_epoch(s: Session, epoch: int, losses: list[float]) -> None:
    """Validate (each rank its share of the images), keep the best epoch's bundle, checkpoint at the epoch's end."""
    cfg, state, data = s.cfg, s.state, s.data
    s.emit(runs.PHASE, phase="validating")
    mine = validate(s.model, data.source, dist.shard(data.val_ids), s.device, cfg.model.max_len)
    captions = _gather_captions(mine, cfg.model.max_len + 1)  # greedy_decode: at most max_len words + <end>
    if not dist.is_main():  # rank 0 scores, reports and saves; the others wait for the checkpoint
        state["epoch"], state["batch"] = epoch + 1, 0
        s.checkpoint()
        return
    texts = {i: data.vocab.decode(captions[i]) for i in data.val_ids}
    refs = {i: data.items[i].captions for i in texts}
    metrics = score_captions({str(i): refs[i] for i in texts}, {str(i): t for i, t in texts.items()}, fast=True)
    metrics = {k: metrics[k] for k in ("BLEU-4", "CIDEr")}
    metrics["distinct_captions"] = len(set(texts.values()))
    s.emit(runs.SAMPLE, epoch=epoch + 1, samples=[
        {"image": str(data.items[i].path), "caption": texts[i], "references": refs[i][:3]} for i in data.val_ids[:4]])
    best = metrics["CIDEr"] > state["best_cider"]
    scst = epoch >= cfg.epochs
    state["history"].append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
                             "scst": scst, **metrics})
    if best:
        state["best_cider"] = metrics["CIDEr"]
        save_bundle(s.run_dir / runs.BEST, s.model, data.vocab, metrics={"val_greedy": {**metrics, "epoch": epoch + 1}})
    s.emit(runs.EPOCH, epoch=epoch + 1, train_loss=state["history"][-1]["train_loss"], metrics=metrics, best=best,
           val_images=len(captions))
    state["epoch"], state["batch"] = epoch + 1, 0
    s.checkpoint()
    more_scst = cfg.epochs <= state["epoch"] < cfg.epochs + cfg.scst_epochs
    s.emit(runs.PHASE, phase="scst" if more_scst else "training")


def run(cfg: TrainConfig, run_dir: Path, resume: bool = False, listeners=()) -> Path | None:
    """Train; -> the new model folder, or None when stopped early (resume later)."""
    cfg = with_init_architecture(cfg.resolved()).check()
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    rank = dist.env_rank()  # under torchrun; the process group is joined in `prepare`
    # first of all, before anything is written: a second trainer on this folder stops here (runs.RunInUse)
    lock = runs.hold_run_lock(run_dir) if rank == 0 else None  # under torchrun rank 0 holds it for the job
    try:
        # before the first event: it tells a fresh STOP from an earlier one
        should_stop = runs.Stopper(run_dir, owner=rank == 0, watch_parent=dist.requested_world() > 1)
        emit = runs.Reporter(run_dir, listeners) if rank == 0 else _silent
        try:
            result = _run(cfg, run_dir, resume, emit, should_stop)
        except Exception as e:
            _report_error(run_dir, rank, emit, f"{type(e).__name__}: {e}", traceback.format_exc())
            raise  # no teardown: the group may be broken, and the process ends anyway
        # the ranks leave together (rank 0 may still be writing): a group torn down under a peer aborts it
        dist.barrier()
        dist.teardown()
    finally:
        if lock is not None:
            lock.release()
    return result


def _silent(event: str, **fields) -> None:
    """The event writer of ranks other than 0: rank 0 reports for all."""


def _report_error(run_dir: Path, rank: int, emit, message: str, trace: str) -> None:
    """Rank 0 writes the run's error event; a failing rank > 0 writes its own (with "rank") and exits, and
    rank 0, whose next collective then fails, reports that rank's error as the run's rather than its own.
    The other way round, a rank > 0 that fails because rank 0 failed first (and said so) adds nothing."""
    if rank:
        if not any(not e.get("rank") for e in runs.attempt_errors(run_dir)):
            runs.Reporter(run_dir)(runs.ERROR, message=f"rank {rank}: {message}", rank=rank, traceback=trace)
        return
    peers = []
    if dist.requested_world() > 1:
        deadline = time.monotonic() + 3.0  # the failed rank writes its line before its process ends
        while not peers and time.monotonic() < deadline:
            time.sleep(0.1)
            peers = [e for e in runs.attempt_errors(run_dir) if e.get("rank")]
    if peers and not peers[0]["message"].endswith(message):  # not the same error on every rank
        message, trace = f"{peers[0]['message']} (then on rank 0: {message})", peers[0].get("traceback", trace)
    emit(runs.ERROR, message=message, traceback=trace)


def _run(cfg: TrainConfig, run_dir: Path, resume: bool, emit, should_stop: runs.Stopper) -> Path | None:
    t_start = time.time()
    resume = resume and (run_dir / runs.CHECKPOINT).exists()
    left = []
    if dist.env_rank() == 0:
        left = runs.clean_partial_writes(run_dir)  # a kill between a temporary write and its rename
        atomic_write_json(run_dir / runs.CONFIG, cfg.to_dict())
    emit(runs.START, config=cfg.to_dict(), pid=os.getpid(), resumed=resume, processes=dist.requested_world())
    if left:
        emit(runs.LOG_EVENT, message=f"removed {len(left)} half-written file(s) of a killed run: "
                                     + ", ".join(p.name for p in left))
    s = prepare(cfg, run_dir, resume, emit, should_stop)
    if s is None:
        emit(runs.STOPPED, reason=should_stop.reason)
        should_stop.consume()
        return None
    if not dist.is_main():
        _train(s)
        return None

    if not _train(s):
        return None
    emit(runs.PHASE, phase="saving")
    seconds = time.time() - t_start
    target = publish_bundle(
        run_dir / runs.BEST, cfg.model_name or run_dir.name, Path(cfg.models_dir),
        metrics={"training": {"history": s.state["history"], "seconds_this_session": round(seconds, 1)}},
        card=model_card(cfg, s.state, len(s.data.train_ids), len(s.data.val_ids), seconds, dist.world()))
    best_metrics = json.loads((target / "metrics.json").read_text(encoding="utf-8")).get("val_greedy", {})
    emit(runs.DONE, bundle=str(target), metrics=best_metrics)
    return target


def train_mode(model: CaptionModel) -> None:
    """Training mode, but a fine-tuned backbone keeps its ImageNet BatchNorm statistics (eval-mode BatchNorm; its
    scale and shift still learn). Batches here hold five captions of each photo, so batch statistics would be
    skewed, and under torchrun each rank would drift to statistics of its own shard (SyncBatchNorm runs on GPUs
    only): frozen statistics are the same on every rank and on every device, as detectron2's FrozenBatchNorm does."""
    model.train()
    if model.cfg.fine_tune and model.encoder is not None:
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def _train(s: Session) -> bool:
    """The epochs from the saved position on; False when stopped."""
    train_mode(s.model)
    s.emit(runs.PHASE, phase="training")
    while s.state["epoch"] < s.cfg.epochs + s.cfg.scst_epochs:
        epoch = s.state["epoch"]
        losses = scst_epoch(s, epoch) if epoch >= s.cfg.epochs else train_epoch(s, epoch)
        if losses is None:
            return False
        end_epoch(s, epoch, losses)
    return True


def _changed_flags(cfg: TrainConfig) -> str:
    flat = {**{k: v for k, v in cfg.to_dict().items() if k != "model"}, **cfg.model.to_dict()}
    defaults = {name: default for name, default, _ in flag_fields()}
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in flat.items() if k in defaults and v != defaults[k])


def model_card(cfg: TrainConfig, state: dict, n_train: int, n_val: int, seconds: float, processes: int = 1) -> str:
    rows = "\n".join(f"| {h['epoch']} | {'SCST' if h.get('scst') else 'XE'} | "
                     f"{h['train_loss'] if h['train_loss'] is None else round(h['train_loss'], 3)} | "
                     f"{h['BLEU-4']} | {h['CIDEr']} |" for h in state["history"])
    launcher = f" under torchrun, {processes} processes (the batch size is the global batch)" if processes > 1 else ""
    return f"""# Caption model: {cfg.model.decoder} decoder on {cfg.model.backbone}

- Data: `{cfg.data}` ({n_train} training images, {n_val} validation images, split {cfg.train_split}/{cfg.val_split})
- Command: `python -m core.train {_changed_flags(cfg)}`{launcher}
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
        from core.data.datasets import inspect_dataset

        info = inspect_dataset(cfg.data, (cfg.train_split, cfg.val_split), cfg.allow_missing)
        print(json.dumps({"config": cfg.to_dict(), "run_dir": str(run_dir.resolve()), "dataset": {
            "format": info.format, "splits": info.splits, "captions": info.n_captions, "problems": info.problems,
            "notes": info.notes}}, indent=2))
        return 0 if info.ok else 1
    finished = [e for e in runs.read_progress(run_dir) if e.get("event") == runs.DONE]
    if args.resume and finished:  # resuming would publish the same model a second time
        print(f"this run has finished; its model is {finished[-1].get('bundle')}", file=sys.stderr)
        return 0
    try:
        bundle = run(cfg, run_dir, resume=args.resume, listeners=[lambda e: print(json.dumps(e), flush=True)])
    except runs.RunInUse as e:
        print(f"training not started: {e}", file=sys.stderr)
        return 3
    except Exception as e:
        print(f"training failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if dist.env_rank():  # rank 0 answers for the run
        return 0
    return 0 if bundle or (run_dir / runs.CHECKPOINT).exists() else 1
