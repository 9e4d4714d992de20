"""How close Java-free scores come to the official ones: nltk's Treebank tokenizer vs Stanford's Java PTBTokenizer.

    python tools/compare_tokenizers.py --data ../shared/data/flickr8k --split val [--captions captions.csv]

Scores the split's first human caption of each image against its other references (and, with --captions, a
model's captions from `python -m core.caption`'s CSV, matched by file name) with both tokenizers.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data.datasets import load_split  # noqa: E402
from core.evaluate.metrics import java_available, score_captions  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--captions", default=None, help="a CSV with image,caption columns (core.caption's output)")
    args = p.parse_args(argv)
    if not java_available():
        print("Java is not installed: the official tokenizer cannot run here", file=sys.stderr)
        return 1
    items, _ = load_split(Path(args.data), args.split)
    sets = {"human (1st caption vs the other 4)": ({it.path.name: it.captions[1:] for it in items},
                                                   {it.path.name: it.captions[0] for it in items})}
    if args.captions:
        with open(args.captions, newline="", encoding="utf-8-sig") as f:
            model = {Path(r["image"]).name: r["caption"] for r in csv.DictReader(f) if r.get("caption")}
        refs = {it.path.name: it.captions for it in items if it.path.name in model}
        sets["model captions"] = (refs, {k: model[k] for k in refs})
    for name, (refs, res) in sets.items():
        java = score_captions(refs, res, java=True)
        nltk = score_captions(refs, res, java=False)
        print(f"{name}, {len(res)} images:")
        for metric in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
            print(f"  {metric:8s} Java PTB {java[metric]:6.2f} | nltk Treebank {nltk[metric]:6.2f} | "
                  f"difference {nltk[metric] - java[metric]:+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
