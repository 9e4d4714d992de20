"""Measure object-word guidance and caption confidence on a dataset split (choose thresholds on the dev split).

    python tools/eval_guidance.py --data ../shared/data/flickr8k --split val [--model models/default]

Encodes every image once, then prints:
- the captions' scores without guidance and with it, for several tag-probability thresholds, with how many
  images were guided and the precision of the forced nouns (the share of guided images where at least one
  human reference uses one of the noun's words);
(The confidence curve is fitted and checked by tools/fit_confidence.py, through the app's own captioner.)
`--sweep` first prints BLEU-4 / CIDEr / distinct captions for a grid of beam widths and length penalties.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.bundle.store import DEFAULT_MODEL  # noqa: E402
from core.nn.weights import load_bundle
from core.nn.batches import iter_image_batches  # noqa: E402
from core.data.datasets import load_split
from core.nn.decode import beam_search  # noqa: E402
from core.nn.precision import encoder_autocast  # noqa: E402
from core.evaluate.metrics import score_captions  # noqa: E402
from core.caption.tags import GUIDE_MIN_PROB, guide_words, image_tags, noun_probs  # noqa: E402
from core.nn.model import with_tag_row  # noqa: E402
from core.evaluate.metrics import tokenize  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--thresholds", default=f"0.3,0.5,{GUIDE_MIN_PROB}")
    p.add_argument("--sweep", default=None, metavar="BEAMS/PENALTIES", help='e.g. "1,2,3,5/0.5,0.7,1.0"')
    args = p.parse_args(argv)
    torch.manual_seed(0)
    bundle = load_bundle(Path(args.model), "cpu")
    model, vocab = bundle.model.eval(), bundle.vocab
    items, _ = load_split(Path(args.data), args.split)
    items = items[: args.limit] if args.limit else items
    spec = model.spec
    t0 = time.time()
    feats, tags = [None] * len(items), [None] * len(items)
    with torch.no_grad():
        for idx, images, errors in iter_image_batches([it.path for it in items], spec.image_size, spec.mean, spec.std, 32):
            with encoder_autocast(torch.device("cpu")):
                f = model.encode(images).float()  # (n, P, C)
            logits = model.encoder.classify(f)  # (n, 1000)
            if model.cfg.tag_slots:
                f = with_tag_row(f, noun_probs(logits))  # (n, P + 1, C): a tag-reading decoder's input
            for i, fi, ti in zip(idx, f, image_tags(logits)):
                feats[i], tags[i] = fi, ti
    keep = [i for i, f in enumerate(feats) if f is not None]
    print(f"encoded {len(keep)} images in {time.time() - t0:.0f} s")
    refs = {i: items[i].captions for i in keep}

    def decode(rows, constraints=None, beam=args.beam, length_penalty=0.7):
        out = {}
        for s in range(0, len(rows), 32):
            chunk = rows[s:s + 32]
            cons = [constraints[i] for i in chunk] if constraints else None
            hyps = beam_search(model.decoder, torch.stack([feats[i] for i in chunk]), beam_size=beam,
                               max_len=20, length_penalty=length_penalty, constraints=cons)
            out.update({i: h[0] for i, h in zip(chunk, hyps)})
        return out

    if args.sweep:
        beams, penalties = ([float(x) for x in part.split(",")] for part in args.sweep.split("/"))
        for beam in beams:
            for lp in penalties:
                t0 = time.time()
                caps = {i: vocab.decode(h.tokens) for i, h in decode(keep, beam=int(beam), length_penalty=lp).items()}
                m = score_captions(refs, caps)
                print(f"beam {int(beam)} length penalty {lp:.1f}: BLEU-4 {m['BLEU-4']:.2f} CIDEr {m['CIDEr']:.2f} "
                      f"METEOR {m.get('METEOR', float('nan')):.2f} distinct {len(set(caps.values()))} "
                      f"({time.time() - t0:.0f} s)", flush=True)
    t0 = time.time()
    plain = decode(keep)
    plain_s = time.time() - t0
    plain_caps = {i: vocab.decode(h.tokens) for i, h in plain.items()}
    base = score_captions(refs, plain_caps)
    print(f"plain beam {args.beam}: BLEU-4 {base['BLEU-4']:.2f} CIDEr {base['CIDEr']:.2f} "
          f"distinct {len(set(plain_caps.values()))}/{len(keep)} ({plain_s:.0f} s)")
    for th in [float(x) for x in args.thresholds.split(",")]:
        cons = {i: guide_words(tags[i], vocab.stoi, min_prob=th) for i in keep}
        guided_rows = [i for i in keep if cons[i]]
        t0 = time.time()
        guided = decode(guided_rows, cons) if guided_rows else {}
        caps = {**plain_caps, **{i: vocab.decode(h.tokens) for i, h in guided.items()}}
        m = score_captions(refs, caps)
        hits = 0
        for i in guided_rows:
            words = {vocab.itos[t] for t in cons[i][0]}
            hits += any(words & set(tokenize(r)) for r in refs[i])
        changed = sum(caps[i] != plain_caps[i] for i in guided_rows)
        prec = hits / len(guided_rows) if guided_rows else float("nan")
        print(f"guided at p>={th:.2f}: BLEU-4 {m['BLEU-4']:.2f} CIDEr {m['CIDEr']:.2f} | guided {len(guided_rows)} images, "
              f"caption changed {changed}, noun precision {prec:.1%} ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
