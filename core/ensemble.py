"""Ensembles: several decoders over one shared encoder, decoded as one model.

    python -m core.ensemble --out models/lite2_att_x3 models/a models/b models/c

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

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn

COMBINE = "logprob"  # "logprob": mean of log-probabilities; "prob": log of the mean probability


class EnsembleDecoder(nn.Module):
    """N decoders with the one-decoder interface (core.model): state keys are prefixed with the member's index."""

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


def combine_bundles(members: list[Path], out: Path, card: str = "") -> Path:
    """Join N single-decoder bundles (same backbone, architecture and vocabulary) into one ensemble bundle."""
    from .bundle import BundleError, load_bundle, save_bundle
    from .config import ModelConfig
    from .model import CaptionModel

    if len(members) < 2:
        raise BundleError("an ensemble needs at least two models")
    bundles = [load_bundle(Path(m), "cpu", pretrained=False) for m in members]
    first = bundles[0]
    for b in bundles:
        if b.config.ensemble != 1:
            raise BundleError(f"{b.path} is an ensemble already; give its members instead")
        if b.config.fine_tune:
            raise BundleError(f"{b.path} fine-tuned its backbone; ensemble members share one frozen backbone")
        if {**b.config.to_dict(), "dropout": 0} != {**first.config.to_dict(), "dropout": 0}:
            raise BundleError(f"{b.path} has another architecture than {first.path} (config.json differs)")
        if b.vocab.itos != first.vocab.itos:
            raise BundleError(f"{b.path} has another vocabulary than {first.path}: the members' words must be the same")
    cfg = ModelConfig.from_dict({**first.config.to_dict(), "ensemble": len(bundles)})
    model = CaptionModel(cfg, with_encoder=False, pretrained=False)
    for member, b in zip(model.decoder.members, bundles):
        member.load_state_dict(b.model.decoder.state_dict(), strict=True)  # fp32 in memory, as loaded
    # fp16 on disk when every member was stored so (the default model is): half the size, the same captions
    half = all(_stored_in_fp16(Path(m) / "model.safetensors") for m in members)
    names = [Path(m).name for m in members]
    card = card or (f"# An ensemble of {len(names)} {cfg.decoder} decoders over {cfg.backbone}\n\n"
                    f"Joined with `python -m core.ensemble` from {', '.join(names)}: at every word the members' "
                    "next-word log-probabilities are averaged. Their own cards say how each was trained.\n")
    return save_bundle(Path(out), model, first.vocab, metrics={"ensemble_of": names}, card=card, half=half)


def _stored_in_fp16(weights: Path) -> bool:
    """Whether every floating-point tensor of a safetensors file is fp16, from its header alone."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="numpy") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    return dtypes & {"F16", "F32", "F64", "BF16"} == {"F16"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.ensemble", description=__doc__.splitlines()[0])
    p.add_argument("members", nargs="+", type=Path, help="model folders trained apart (same data and vocabulary)")
    p.add_argument("--out", required=True, type=Path, help="the new model folder")
    args = p.parse_args(argv)
    from .bundle import BundleError

    try:
        out = combine_bundles(args.members, args.out)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"model": str(out), "members": [str(m) for m in args.members]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
