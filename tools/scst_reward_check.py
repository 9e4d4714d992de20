"""Look at the SCST reward of a model on training images: why the first SCST (greedy baseline) lost CIDEr.

    CAPTION_CACHE_DIR=/work/cache/features python tools/scst_reward_check.py --data ../shared/data/flickr8k \
        [--model models/default] [--images 300] [--samples 5] [--max-len 16]

Prints, for the greedy caption and for sampled captions (with dropout, as SCST samples them, and without):
the mean CIDEr-D reward, the share of captions that chose <end>, the share that end on a word no English
caption ends on ("with", "a", ...), and for the samples the share of positive advantages under the greedy
baseline and under the leave-one-out baseline (core.train.scst), with and without <end> seen by the reward.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.bundle.store import DEFAULT_MODEL  # noqa: E402
from core.nn.weights import load_bundle
from core.data.datasets import load_split  # noqa: E402
from core.nn.decode import greedy_decode, sample_captions  # noqa: E402
from core.nn.features import FeatureCache, encode_to_cache  # noqa: E402
from core.evaluate.metrics import CorpusCider  # noqa: E402
from core.base.paths import cache_dir  # noqa: E402
from core.train.scst import DANGLING, CiderReward, leave_one_out_advantage  # noqa: E402
from core.data.vocabulary import END  # noqa: E402


def _describe(name, captions, ended, rewards):
    last = [c.rsplit(" ", 1)[-1] for c in captions]
    print(f"{name:44s} reward {rewards.mean():.3f}  chose <end> {np.mean(ended):.2f}  "
          f"ends on a dangling word {np.mean([w in DANGLING for w in last]):.3f}  words {np.mean([len(c.split()) for c in captions]):.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--max-len", type=int, default=16)
    p.add_argument("--top-p", default="1.0", help="nucleus sizes to sample with, e.g. 1.0,0.9,0.8")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    bundle = load_bundle(Path(args.model), "cpu")
    model, vocab = bundle.model, bundle.vocab
    train, _ = load_split(Path(args.data), "train")
    items = train[:: max(1, len(train) // args.images)][: args.images]
    cache = FeatureCache(cache_dir(), bundle.config.backbone, "grid", (8, 8))
    rows = encode_to_cache(model.encoder, bundle.config.backbone, [it.path for it in items], cache,
                           torch.device("cpu"))
    feats = torch.from_numpy(np.asarray(cache.array()[rows], dtype=np.float32))  # (N, P, C)
    refs = [it.captions for it in items]
    n = args.samples
    old_reward = CorpusCider([it.captions for it in train])  # the first SCST's reward: no <end>
    new_reward = CiderReward([it.captions for it in train])
    rep = [r for r in refs for _ in range(n)]
    with torch.no_grad():
        model.eval()
        g, _ = greedy_decode(model.decoder, feats, args.max_len)  # (N, T)
        g_caps = [vocab.decode(t) for t in g.tolist()]
        g_end = [END in t for t in g.tolist()]
        g_old = old_reward(g_caps, refs)
        _describe("greedy (eval mode), reward without <end>", g_caps, g_end, g_old)
        _describe("greedy (eval mode), reward with <end>", g_caps, g_end, new_reward(g_caps, g_end, refs))
        for mode, top_p in [(m, float(tp)) for tp in args.top_p.split(",") for m in ("train", "eval")]:
            model.train(mode == "train")
            tokens, _, _ = sample_captions(model.decoder, feats, args.max_len, repeats=n, top_p=top_p)  # (N*n, T)
            mode = f"{mode} mode, top-p {top_p}"
            caps = [vocab.decode(t) for t in tokens.tolist()]
            ended = [END in t for t in tokens.tolist()]
            r_old = old_reward(caps, rep)
            r_new = new_reward(caps, ended, rep)
            _describe(f"samples ({mode} mode), reward without <end>", caps, ended, r_old)
            _describe(f"samples ({mode} mode), reward with <end>", caps, ended, r_new)
            adv_greedy = r_old - np.repeat(g_old, n)
            adv_loo = leave_one_out_advantage(r_new.reshape(-1, n)).reshape(-1)
            print(f"   positive advantage: greedy baseline {np.mean(adv_greedy > 0):.2f} "
                  f"(mean advantage {adv_greedy.mean():+.3f}); leave-one-out {np.mean(adv_loo > 0):.2f} "
                  f"(mean {adv_loo.mean():+.3f})")
            cut = [not e for e in ended]
            if any(cut):
                print(f"   samples cut at max length: reward without <end> {r_old[cut].mean():.3f}, "
                      f"with <end> {r_new[cut].mean():.3f}; the others {r_old[~np.array(cut)].mean():.3f} / "
                      f"{r_new[~np.array(cut)].mean():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
