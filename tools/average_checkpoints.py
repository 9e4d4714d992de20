"""Average the weights of several checkpoints or bundles of one run (in fp32) into a new model bundle.

    python tools/average_checkpoints.py --like models/default --out /tmp/averaged \
        runs/X/snapshots/step_300.safetensors runs/X/snapshots/step_350.safetensors ...

Accepts training checkpoints (core.train.checkpoint: weights under "model/") and bundles' model.safetensors alike;
every input must have the same tensors as the `--like` bundle, whose config and vocabulary the new bundle
takes. The average is stored in fp16 (the default model's format) unless --fp32. Checkpoint averaging along
one run's last steps smooths the noise of the last updates (Vaswani et al. 2017 average their last checkpoints).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.nn.weights import load_bundle, save_bundle  # noqa: E402


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model's tensors of a checkpoint or a bundle (a folder or its model.safetensors), in fp32."""
    path = Path(path)
    tensors = load_file(path / "model.safetensors" if path.is_dir() else path)
    if any(k.startswith("model/") for k in tensors):
        tensors = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def average(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the inputs' floating-point tensors (fp32); other tensors from the first input."""
    first = model_weights(paths[0])
    total = {k: v.clone() for k, v in first.items()}
    for p in paths[1:]:
        w = model_weights(p)
        if w.keys() != first.keys():
            raise ValueError(f"{p} does not hold the same tensors as {paths[0]}")
        for k, v in w.items():
            if v.is_floating_point():
                total[k] += v
    return {k: v / len(paths) if v.is_floating_point() else v for k, v in total.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--like", required=True, type=Path, help="a bundle with the same config and vocabulary")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--fp32", action="store_true")
    args = p.parse_args(argv)
    bundle = load_bundle(args.like, "cpu")
    weights = average(args.inputs)
    missing, unexpected = bundle.model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith("encoder.")]
    if missing or unexpected:
        print(f"the inputs do not fit {args.like}: missing {missing[:3]}, unexpected {unexpected[:3]}", file=sys.stderr)
        return 1
    save_bundle(args.out, bundle.model, bundle.vocab, metrics={"averaged": [str(x) for x in args.inputs]},
                half=not args.fp32)
    print(f"averaged {len(args.inputs)} inputs into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
