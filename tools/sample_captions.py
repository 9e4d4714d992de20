"""Caption the bundled sample photos with and without object words: the README's table of example captions.

    python tools/sample_captions.py [--model models/default] [--beam 3]

Prints one Markdown row per photo of assets/samples: its tags, the caption without object words, the caption
with them (the app's default), and the calibrated confidence with the "check this one" flag.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.bundle.store import DEFAULT_MODEL  # noqa: E402
from core.nn.captioner import Captioner  # noqa: E402
from core.base.config import DecodeOptions  # noqa: E402
from core.caption.tags import format_tags  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--beam", type=int, default=DecodeOptions.beam)
    args = p.parse_args(argv)
    cap = Captioner(args.model)
    options = DecodeOptions(beam=args.beam)
    photos = [(p.name, p) for p in sorted((ROOT / "assets" / "samples").glob("*.jpg"))]
    plain = {r.image: r for r in cap.caption(photos, DecodeOptions(beam=args.beam, object_words=False))}
    print("| photo | tags (the backbone's classifier) | without object words | with object words (default) | confidence |")
    print("|---|---|---|---|---|")
    for r in cap.caption(photos, options):
        same = r.caption == plain[r.image].caption
        guided = "(same: no confident tag)" if r.guided is None else ("(same)" if same else r.caption)
        conf = "" if r.confidence is None else f"{r.confidence:.2f}" + (", check this one" if r.check else "")
        print(f"| `assets/samples/{r.image}` | {format_tags(r.tags[:2])} | {plain[r.image].caption} | {guided} | {conf} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
