"""Score models and every ensemble of them on a dataset split, from cached features: the model card's table.

    CAPTION_CACHE_DIR=/work/cache/features OMP_NUM_THREADS=1 python tools/score_ensembles.py \
        --data ../shared/data/flickr8k runs/seed1/model runs/seed2/model runs/seed3/model [--beam 3] [--sizes 2,3]

Each input is a single-decoder bundle of the same backbone. Prints one line per model and per combination of
models sharing a vocabulary (core.nn.ensemble.EnsembleDecoder, both averaging rules): BLEU-4, CIDEr and distinct
captions (Python PTB-rule tokenizer, fast) and the CPU time of beam search per photo, decoded under bf16 autocast
where the CPU runs it natively, as the app does. The features are encoded once into the cache.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.nn.weights import load_bundle  # noqa: E402
from core.data.datasets import load_split  # noqa: E402
from core.nn.decode import beam_search  # noqa: E402
from core.nn.precision import encoder_autocast  # noqa: E402
from core.nn.ensemble import EnsembleDecoder  # noqa: E402
from core.nn.features import FeatureCache, encode_to_cache  # noqa: E402
from core.evaluate.metrics import score_captions  # noqa: E402
from core.base.paths import cache_dir  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--split", default="val")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--length-penalty", type=float, default=0.7)
    p.add_argument("--sizes", default="2,3", help="ensemble sizes to try (default 2,3)")
    args = p.parse_args(argv)
    bundles = {m.name: load_bundle(m, "cpu") for m in args.models}
    first = next(iter(bundles.values()))
    items, _ = load_split(args.data, args.split)
    cache = FeatureCache(cache_dir(), first.config.backbone, "grid", (first.model.spec.image_size // 32,) * 2)
    rows = encode_to_cache(first.model.encoder, first.config.backbone, [it.path for it in items], cache,
                           torch.device("cpu"))
    keep = [i for i, r in enumerate(rows) if r is not None]
    feats = torch.from_numpy(np.asarray(cache.array()[[rows[i] for i in keep]], dtype=np.float32))  # (N, P, C)
    refs = {str(i): items[i].captions for i in keep}

    def score(name, decoder, vocab):
        caps, t0 = {}, time.process_time()
        with torch.no_grad(), encoder_autocast(torch.device("cpu")):  # the decoder too, as core.nn.captioner does on CPU
            for s in range(0, len(keep), 32):
                hyps = beam_search(decoder, feats[s:s + 32], beam_size=args.beam, max_len=first.config.max_len,
                                   length_penalty=args.length_penalty)
                caps.update({str(keep[s + j]): vocab.decode(h[0].tokens) for j, h in enumerate(hyps)})
        ms = 1000 * (time.process_time() - t0) / len(caps)
        m = score_captions(refs, caps, java=False, fast=True)
        print(f"{name}: BLEU-4 {m['BLEU-4']:.2f} CIDEr {m['CIDEr']:.2f} distinct {len(set(caps.values()))}/{len(caps)} "
              f"beam search {ms:.1f} CPU ms/photo", flush=True)

    for name, b in bundles.items():
        score(name, b.model.decoder, b.vocab)
    same = [n for n, b in bundles.items() if b.vocab.itos == first.vocab.itos]
    for k in (int(x) for x in args.sizes.split(",")):
        for combo in itertools.combinations(same, k):
            for rule in ("logprob", "prob"):
                members = [bundles[n].model.decoder for n in combo]
                score(f"{'+'.join(combo)} ({rule})", EnsembleDecoder(members, rule), first.vocab)
    return 0


if __name__ == "__main__":
    sys.exit(main())
