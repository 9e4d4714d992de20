"""Score models on the dev split from cached features: the SCST curve, checkpoint averages, decoding choices.

    CAPTION_CACHE_DIR=/work/cache/features python tools/score_snapshots.py --data ../shared/data/flickr8k \
        --like models/default [--beam 1] [--ptb] models/default runs/X/snapshots/step_*.safetensors

Each input is a training checkpoint or a bundle (tools/average_checkpoints.model_weights) loaded into the
`--like` bundle's model. Prints one line per input: BLEU-4, CIDEr, distinct captions of the split, and the
decoding time per image. --beam 1 is greedy (the trainer's validation); --ptb scores with the PTB tokenizer
(Java) as core.evaluate.run does, else with the Python one (fast, within 0.1 of it here).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.nn.weights import load_bundle  # noqa: E402
from core.data.datasets import load_split  # noqa: E402
from core.nn.decode import beam_search, greedy_decode  # noqa: E402
from core.nn.features import FeatureCache, encode_to_cache  # noqa: E402
from core.evaluate.metrics import score_captions  # noqa: E402
from core.base.paths import cache_dir  # noqa: E402

from average_checkpoints import model_weights  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--like", required=True, type=Path)
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--length-penalty", type=float, default=0.7)
    p.add_argument("--ptb", action="store_true")
    args = p.parse_args(argv)
    bundle = load_bundle(args.like, "cpu")
    model, vocab = bundle.model.eval(), bundle.vocab
    items, _ = load_split(Path(args.data), args.split)
    cache = FeatureCache(cache_dir(), bundle.config.backbone, "grid", (8, 8))
    rows = encode_to_cache(model.encoder, bundle.config.backbone, [it.path for it in items], cache, torch.device("cpu"))
    keep = [i for i, r in enumerate(rows) if r is not None]
    feats = torch.from_numpy(np.asarray(cache.array()[[rows[i] for i in keep]], dtype=np.float32))  # (N, P, C)
    refs = {str(i): items[i].captions for i in keep}
    inputs = sorted(args.inputs, key=lambda x: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(x))])
    for path in inputs:
        model.load_state_dict(model_weights(path), strict=False)
        t0, caps = time.time(), {}
        with torch.no_grad():
            for s in range(0, len(keep), 100):
                f = feats[s:s + 100]  # (b, P, C)
                if args.beam == 1:
                    tokens, _ = greedy_decode(model.decoder, f, bundle.config.max_len)
                    texts = [vocab.decode(t) for t in tokens.tolist()]
                else:
                    hyps = beam_search(model.decoder, f, beam_size=args.beam, max_len=bundle.config.max_len,
                                       length_penalty=args.length_penalty)
                    texts = [vocab.decode(h[0].tokens) for h in hyps]
                caps.update({str(keep[s + j]): t for j, t in enumerate(texts)})
        seconds = time.time() - t0
        m = score_captions(refs, caps, java=args.ptb, fast=not args.ptb)
        print(f"{path}: BLEU-4 {m['BLEU-4']:.2f} CIDEr {m['CIDEr']:.2f} distinct {len(set(caps.values()))}/{len(caps)} "
              f"({1000 * seconds / len(caps):.1f} ms/image)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
