"""Measure how the backbone classifier's tags relate to the nouns of a photo's captions -> core/data/tag_noise.json.

Text-only caption data (core.data.text_only) gets tags made from its own nouns; this measures the noise those tags
must have to look like the classifier's: on captioned photos (Flickr8k train + dev), how often the photo's subject (the
noun most of its captions name first) and its other nouns (named by at least 2 captions) are among the classifier's
top tags, with what probability, and which wrong nouns the top tags hold, with theirs.

    python tools/measure_tag_noise.py --data ../shared/data/flickr8k [--splits train val] [--out core/data/tag_noise.json]

It encodes the photos with the backbone (or reads them from the feature cache, which training fills).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.base.files import atomic_write_json  # noqa: E402
from core.base.paths import cache_dir  # noqa: E402
from core.caption.tags import noun_probs  # noqa: E402
from core.data.datasets import load_split  # noqa: E402
from core.data.object_words import object_words  # noqa: E402
from core.data.text_only import caption_nouns  # noqa: E402
from core.data.vocabulary import fast_tokenize  # noqa: E402
from core.nn.backbones import get_spec  # noqa: E402
from core.nn.features import FeatureCache, encode_to_cache  # noqa: E402
from core.nn.model import Encoder  # noqa: E402

TOP = 3  # the tags a decoder reads (ModelConfig.tag_slots of the default model)
QUANTILES = 21


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--backbone", default="efficientnet_lite2")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "core" / "data" / "tag_noise.json"))
    args = p.parse_args(argv)
    items = [it for split in args.splits for it in load_split(args.data, split)[0]]
    spec = get_spec(args.backbone)
    encoder = Encoder(args.backbone, pretrained=True).eval()
    side = spec.image_size // 32
    cache = FeatureCache(cache_dir(), args.backbone, "grid", (side, side))
    paths = [it.path for it in items]
    encode_to_cache(encoder, args.backbone, paths, cache, torch.device("cpu"))
    rows = cache.rows(paths)
    ow = object_words()
    subject_p, other_p, false_p, false_nouns = [], [], [], Counter()
    counts = Counter()  # subjects / subjects found / other nouns / other nouns found
    arr = cache.array()
    for start in range(0, len(items), 256):
        chunk = [(it, r) for it, r in zip(items[start:start + 256], rows[start:start + 256]) if r is not None]
        with torch.no_grad():
            grids = torch.from_numpy(np.stack([arr[r] for _, r in chunk]).astype(np.float32))  # (B, P, C)
            probs = noun_probs(encoder.classify(grids))  # (B, N)
        top_p, top_n = probs.topk(TOP, dim=1)  # (B, TOP)
        for (it, _), ps, ns in zip(chunk, top_p.tolist(), top_n.tolist()):
            per_caption = [caption_nouns(fast_tokenize(c)) for c in it.captions]
            anywhere = set().union(*map(set, per_caption))
            firsts = Counter(nouns[0] for nouns in per_caption if nouns)
            subject = firsts.most_common(1)[0][0] if firsts and firsts.most_common(1)[0][1] >= 2 else None
            others = {n for n in anywhere if n != subject and sum(n in c for c in per_caption) >= 2}
            tagged = dict(zip(ns, ps))
            if subject is not None:  # the noun most captions name first: what the photo is of
                counts["subjects"] += 1
                if subject in tagged:
                    counts["subjects found"] += 1
                    subject_p.append(tagged[subject])
            counts["others"] += len(others)
            counts["others found"] += len(others & set(tagged))
            other_p += [tagged[n] for n in others & set(tagged)]
            for n, q in tagged.items():
                if n not in anywhere:
                    false_p.append(q)
                    false_nouns[ow.nouns[n]] += 1
    qs = np.linspace(0, 1, QUANTILES)
    out = {"about": f"the classifier's top {TOP} tags against caption nouns, {len(items)} photos of {args.data} "
                    f"({', '.join(args.splits)}); made by tools/measure_tag_noise.py",
           "subject_rate": round(counts["subjects found"] / max(1, counts["subjects"]), 4),
           "subject_probs": [round(float(v), 4) for v in np.quantile(subject_p, qs)],
           "other_rate": round(counts["others found"] / max(1, counts["others"]), 4),
           "other_probs": [round(float(v), 4) for v in np.quantile(other_p, qs)],
           "false_probs": [round(float(v), 4) for v in np.quantile(false_p, qs)],
           "slots": TOP,
           "false_nouns": dict(false_nouns.most_common(200))}
    atomic_write_json(Path(args.out), out)
    print(f"{len(items)} photos: the subject among the top {TOP} tags in {out['subject_rate']:.2f} of them (median "
          f"probability {np.median(subject_p):.2f}), another caption noun {out['other_rate']:.2f} "
          f"({np.median(other_p):.2f}); a wrong top tag's median probability {np.median(false_p):.2f} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
