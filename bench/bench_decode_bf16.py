"""Beam search in bf16 (what core.nn.captioner does on a CPU with native bf16) against fp32: speed and captions.

    .venv/bin/python bench/bench_decode_bf16.py --data ../shared/data/flickr8k --split val --images 480

Encodes the first N photos of a split once (bf16 encoder, as always), then runs the default beam search with
object words on each batch twice, in fp32 and as Captioner does (bf16 autocast, fp32 logits), interleaved so
that both see the same load. Prints the seconds of each, how many best captions differ, and BLEU-4 / CIDEr of
both against the references (core.evaluate.metrics).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.nn.captioner import Captioner  # noqa: E402
from core.nn.batches import iter_image_batches  # noqa: E402
from core.data.datasets import load_split
from core.nn.decode import beam_search  # noqa: E402
from core.nn.precision import bf16_native, encoder_autocast  # noqa: E402
from core.evaluate.metrics import score_captions  # noqa: E402
from core.caption.tags import guide_words, image_tags  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--images", type=int, default=480)
    p.add_argument("--model", default="models/default")
    p.add_argument("--beam", type=int, default=3)
    args = p.parse_args()
    items, _ = load_split(Path(args.data), args.split)
    items = items[: args.images]
    c = Captioner(args.model, device="cpu")
    if not bf16_native(c.device):
        print("this CPU has no native bf16: Captioner decodes in fp32 here, nothing to compare")
        return
    s = c.spec
    modes = {"fp32": contextlib.nullcontext, "bf16 (Captioner)": c._decoder_autocast}
    captions = {m: {} for m in modes}
    seconds = dict.fromkeys(modes, 0.0)
    with torch.no_grad():
        for idx, images, _ in iter_image_batches([it.path for it in items], s.image_size, s.mean, s.std, 32):
            with encoder_autocast(c.device):
                feats = c.model.encode(images).float()  # (n, P, C)
            guide = [guide_words(t, c.vocab.stoi) for t in image_tags(c.model.encoder.classify(feats))]
            for mode, context in modes.items():
                t = time.perf_counter()
                with context():
                    hyps = beam_search(c.model.decoder, feats, beam_size=args.beam,
                                       constraints=guide if any(guide) else None)
                seconds[mode] += time.perf_counter() - t
                for i, h in zip(idx, hyps):
                    captions[mode][str(items[i].path)] = c.vocab.decode(h[0].tokens)
    refs = {str(it.path): it.captions for it in items}
    first, second = captions.values()
    print(f"{len(first)} photos of {Path(args.data).name}/{args.split}, model {Path(args.model).name}, beam {args.beam}")
    print(f"best captions that differ: {sum(first[k] != second[k] for k in first)}")
    for mode in modes:
        scores = score_captions(refs, captions[mode])
        print(f"{mode:18} beam search {seconds[mode]:6.1f} s | BLEU-4 {scores['BLEU-4']:.2f} | CIDEr {scores['CIDEr']:.2f}")
    print(json.dumps({"speedup": round(seconds["fp32"] / seconds["bf16 (Captioner)"], 2)}))


if __name__ == "__main__":
    main()
