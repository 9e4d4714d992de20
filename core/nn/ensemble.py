"""Ensembles: several decoders over one shared encoder, decoded as one model.

    python -m core.bundle.join --out models/lite2_att_x3 models/a models/b models/c

An ensemble bundle is an ordinary bundle (safetensors + JSON) whose config says `"ensemble": N` and whose weights
hold N decoders (`decoder.members.<i>.*`) trained apart (different seeds) on the same data, vocabulary and frozen
backbone. The image is encoded once; at each word every member reads it and the members' next-word distributions
are averaged (below), so greedy decoding, beam search, constrained beam search and sampling drive an ensemble
exactly as they drive one decoder, through `init_state` / `step`.

Averaging: the log-probabilities (a product of experts, renormalised by the search's log_softmax) or the
probabilities (a mixture). Both were measured on the Flickr8k dev split (the default model's card); the mean of
log-probabilities is what ruotianluo/self-critical.pytorch's ensembles and most captioning papers report too.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

COMBINE = "logprob"  # "logprob": mean of log-probabilities; "prob": log of the mean probability


class EnsembleDecoder(nn.Module):
    """N decoders with the one-decoder interface (core.nn.model): state keys are prefixed with the member's index."""

    def __init__(self, members: list[nn.Module], combine: str = COMBINE):
        super().__init__()
        if combine not in ("logprob", "prob"):
            raise ValueError(f"combine must be 'logprob' or 'prob', not {combine!r}")
        self.members = nn.ModuleList(members)
        self.combine = combine

    def _member_state(self, state: dict, i: int) -> dict:
        prefix = f"{i}."
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    def init_state(self, feats):
        state = {}
        for i, m in enumerate(self.members):
            state.update({f"{i}.{k}": v for k, v in m.init_state(feats).items()})  # (B, ...) each
        return state

    def _average(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """Members' logits, each (B, V) -> the ensemble's log-probabilities (B, V)."""
        logp = torch.stack([x.float().log_softmax(-1) for x in logits])  # (N, B, V)
        if self.combine == "prob":
            return logp.logsumexp(0) - math.log(len(logits))  # (B, V), normalised already
        return logp.mean(0)  # (B, V): the search's log_softmax renormalises the product

    def step(self, tokens, state):
        new, logits, alphas = {}, [], []
        for i, m in enumerate(self.members):
            out, s, alpha = m.step(tokens, self._member_state(state, i))
            logits.append(out)
            # the member's own tensors, unchanged ones included: beam search skips gathering those it passed through
            new.update({f"{i}.{k}": v for k, v in s.items()})
            if alpha is not None:
                alphas.append(alpha.float())
        alpha = torch.stack(alphas).mean(0) if alphas else None  # (B, P): where the members looked, on average
        return self._average(logits), new, alpha

    def forward(self, feats, captions, image_index=None):
        """Teacher-forced, for scoring: (B, L-1, V) log-probabilities as logits, mean attention (or None)."""
        outs = [m(feats, captions) if image_index is None else m(feats, captions, image_index=image_index)
                for m in self.members]
        logits = [o[0] for o in outs]
        alphas = [o[1] for o in outs if o[1] is not None]
        return self._average(logits), (torch.stack(alphas).mean(0) if alphas else None)
