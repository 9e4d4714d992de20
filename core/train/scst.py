"""Self-critical sequence training (SCST): the math of one step, apart from the training loop.

Rennie et al. 2017 ("Self-critical Sequence Training for Image Captioning") train on the CIDEr-D reward of
sampled captions with the greedy caption's reward as the baseline. We use the baseline of Luo 2020 ("A Better
Variant of Self-Critical Sequence Training", arXiv:2003.09971): each image gets n samples, and each sample's
baseline is the mean reward of the image's OTHER n-1 samples. It needs no extra greedy decode, and the
baseline comes from the same (dropout-perturbed) policy as the sample, so the advantages of an image's samples
sum to zero instead of being mostly negative.

The reward sees the end of a caption as a word (`EOS_WORD`, appended to the references and to every sampled
caption that chose <end>), as in the reference implementation (ruotianluo/self-critical.pytorch): without it,
CIDEr-D cannot tell "a dog runs on the grass" from "a dog runs on the grass with a", and the policy learns
to stop mid-phrase. Document frequencies come once from the training references (core.evaluate.metrics.CorpusCider).
"""
from __future__ import annotations

import numpy as np
import torch

from core.data.vocabulary import END, Vocabulary
from core.evaluate.metrics import CorpusCider
from core.nn.decode import sample_captions

EOS_WORD = "eos"  # not a Flickr8k or COCO word; what the CIDEr-D reward sees where a caption ends
# words that do not end an English caption: a sample ending in one of them was cut off mid-phrase
DANGLING = frozenset({"a", "an", "the", "of", "with", "in", "on", "at", "and", "to", "while", "is", "are", "his",
                      "her", "their", "its", "for", "from", "by", "into", "near", "next", "behind"})


class CiderReward:
    """CIDEr-D (x1, as in the SCST literature) of captions against their image's references, <end> included."""

    def __init__(self, corpus_refs: list[list[str]]):
        self.cider = CorpusCider([[f"{r} {EOS_WORD}" for r in refs] for refs in corpus_refs])

    def __call__(self, captions: list[str], ended: list[bool], refs: list[list[str]]) -> np.ndarray:
        """captions[i] (ended[i]: it chose <end>) against refs[i] -> (N,) rewards."""
        texts = [f"{c} {EOS_WORD}" if e else c for c, e in zip(captions, ended)]
        return self.cider(texts, [[f"{r} {EOS_WORD}" for r in rs] for rs in refs])


def leave_one_out_advantage(rewards: np.ndarray) -> np.ndarray:
    """rewards (B, n) -> advantages (B, n): each reward minus the mean of the image's other n-1 rewards."""
    n = rewards.shape[1]
    if n < 2:
        raise ValueError("the leave-one-out baseline needs at least 2 samples per image")
    others = (rewards.sum(1, keepdims=True) - rewards) / (n - 1)  # (B, n)
    return rewards - others  # (B, n) = n/(n-1) * (reward - image mean)


def policy_loss(advantage: torch.Tensor, logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE with a baseline: advantage (N,), logps and mask (N, T) -> scalar, averaged over real steps."""
    return -(advantage.unsqueeze(1) * logps * mask).sum() / mask.sum().clamp(min=1)


def scst_step(decoder, feats: torch.Tensor, refs: list[list[str]], reward: CiderReward, vocab: Vocabulary,
              n_samples: int = 5, max_len: int = 16, top_p: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Sample n captions per image of feats (B, P, C), score them -> (loss, statistics of the batch).

    The decoder's train/eval mode is the caller's: in train mode the samples see dropout, as in Rennie et al.
    and Luo's code; the leave-one-out baseline comes from the same policy, so it stays fair either way.
    top_p < 1 samples from the nucleus (core.nn.decode.sample_captions); the gradient still uses the full
    distribution's log-probabilities of the chosen words.
    """
    B = feats.size(0)
    tokens, logps, mask = sample_captions(decoder, feats, max_len, repeats=n_samples, top_p=top_p)  # (B*n, T) each
    rows = tokens.tolist()
    ended = [END in row for row in rows]
    captions = [vocab.decode(row) for row in rows]
    r = reward(captions, ended, [rs for rs in refs for _ in range(n_samples)])  # (B*n,)
    advantage = leave_one_out_advantage(r.reshape(B, n_samples)).reshape(-1)  # (B*n,)
    adv_t = torch.from_numpy(advantage).float().to(feats.device)  # (B*n,)
    loss = policy_loss(adv_t, logps, mask)
    last = [c.rsplit(" ", 1)[-1] for c in captions]
    stats = {"reward": float(r.mean()), "ended": float(np.mean(ended)),
             "dangling": float(np.mean([w in DANGLING for w in last])),
             "words": float(np.mean([len(c.split()) for c in captions]))}
    return loss, stats
