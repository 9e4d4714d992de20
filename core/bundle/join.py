"""Joining bundles into an ensemble bundle (core.nn.ensemble):

    python -m core.bundle.join --out models/lite2_att_x3 models/a models/b models/c

The members must share a vocabulary and a frozen backbone; their decoders are stored side by side
(`decoder.members.<i>.*`) in one safetensors file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def combine_bundles(members: list[Path], out: Path, card: str = "") -> Path:
    """Join N single-decoder bundles (same backbone, architecture and vocabulary) into one ensemble bundle."""
    from core.base.config import ModelConfig
    from core.bundle.store import BundleError
    from core.nn.model import CaptionModel
    from core.nn.weights import load_bundle, save_bundle

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
                    f"Joined with `python -m core.bundle.join` from {', '.join(names)}: at every word the members' "
                    "next-word log-probabilities are averaged. Their own cards say how each was trained.\n")
    return save_bundle(Path(out), model, first.vocab, metrics={"ensemble_of": names}, card=card, half=half)


def _stored_in_fp16(weights: Path) -> bool:
    """Whether every floating-point tensor of a safetensors file is fp16, from its header alone."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="numpy") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    return dtypes & {"F16", "F32", "F64", "BF16"} == {"F16"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.bundle.join", description=__doc__.splitlines()[0])
    p.add_argument("members", nargs="+", type=Path, help="model folders trained apart (same data and vocabulary)")
    p.add_argument("--out", required=True, type=Path, help="the new model folder")
    args = p.parse_args(argv)
    from core.bundle.store import BundleError

    try:
        out = combine_bundles(args.members, args.out)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"model": str(out), "members": [str(m) for m in args.members]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
