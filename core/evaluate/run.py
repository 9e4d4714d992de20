"""`python -m core.evaluate`: caption a dataset split with a model bundle and score it (core.evaluate.metrics).

The scores are stored in the bundle's metrics.json under "<dataset folder>/<split>", with caption diagnostics
(`caption_diagnostics`): what the n-gram metrics do not show about a model's habits (how many words it uses, the
clothes it invents, the phrases it repeats).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from core.base.config import ConfigError, DecodeOptions
from core.evaluate.metrics import java_available, score_captions, tokenize

# Garments, grouped: a caption's "t-shirt" is supported by a reference's "shirt". Words of Flickr8k and COCO captions.
GARMENTS = {
    "shirt": {"shirt", "shirts", "t-shirt", "t-shirts", "tshirt", "tee", "top", "tank", "blouse"},
    "jacket": {"jacket", "jackets", "coat", "coats", "hoodie", "sweatshirt", "sweater", "vest", "parka"},
    "dress": {"dress", "dresses", "gown", "skirt"},
    "trousers": {"pants", "jeans", "trousers", "shorts", "trunks", "leggings"},
    "hat": {"hat", "hats", "cap", "caps", "helmet", "helmets", "beanie", "bandana"},
    "uniform": {"uniform", "uniforms", "jersey", "jerseys", "outfit", "outfits", "costume", "costumes", "suit",
                "suits", "swimsuit", "bikini", "wetsuit"},
}
GARMENT_OF = {w: g for g, words in GARMENTS.items() for w in words}
COLOURS = frozenset({"red", "blue", "green", "yellow", "black", "white", "orange", "pink", "purple", "brown", "gray",
                     "grey", "striped", "tan", "dark", "light", "colorful", "maroon", "camouflage"})
_WEARING = frozenset({"in", "wearing", "wears", "dressed"})  # "a man in red", "a girl wearing pink"


def clothing_mentions(tokens: list[str]) -> list[tuple[str | None, str | None]]:
    """(colour, garment group) of each piece of clothing a caption names: "a boy in a blue shirt" -> [("blue",
    "shirt")], "a man in red" -> [("red", None)], "a dog" -> []. A colour counts when it comes at most two words
    before a garment ("a red and white shirt") or straight after "in"/"wearing"."""
    out = []
    for i, w in enumerate(tokens):
        if w in GARMENT_OF:
            colour = next((tokens[j] for j in range(i - 1, max(i - 4, -1), -1) if tokens[j] in COLOURS), None)
            out.append((colour, GARMENT_OF[w]))
        elif w in COLOURS and i and tokens[i - 1] in _WEARING and not (i + 1 < len(tokens) and (
                tokens[i + 1] in GARMENT_OF or tokens[i + 1] in COLOURS or tokens[i + 1] == "and")):
            out.append((w, None))
    return out


def unsupported_clothing(caption: list[str], references: list[list[str]]) -> bool:
    """Whether the caption names clothing no reference supports: a garment group that no reference names, or a
    clothing colour that no reference uses at all (references say "red shirt" or "in red" in many ways)."""
    ref_words = {w for r in references for w in r}
    ref_groups = {GARMENT_OF[w] for w in ref_words if w in GARMENT_OF}
    for colour, group in clothing_mentions(caption):
        if group is not None and group not in ref_groups:
            return True
        if colour is not None and colour not in ref_words:
            return True
    return False


def caption_diagnostics(results: dict[str, str], references: dict[str, list[str]], top: int = 10) -> dict:
    """Habits of a model's captions {image: caption} against their references {image: [captions]}:
    - distinct_words: different words (PTB tokens) in all the captions together;
    - shirt: share of captions naming a shirt; unsupported_shirt: ... where no reference names one;
    - unsupported_clothing: share naming clothing (a garment or a clothing colour) that no reference supports;
    - repeated_bigram: share of captions in which a word pair occurs twice ("a man in a blue shirt and a man in");
    - most_repeated: the `top` captions given to the most images, with their counts.
    Shares are percentages of the captions."""
    toks = {k: tokenize(c) for k, c in results.items()}
    refs = {k: [tokenize(r) for r in references.get(k, [])] for k in results}
    n = max(len(toks), 1)
    shirt = [k for k, t in toks.items() if any(GARMENT_OF.get(w) == "shirt" for w in t)]
    unsupported_shirt = [k for k in shirt if not any(GARMENT_OF.get(w) == "shirt" for r in refs[k] for w in r)]
    bigram_repeat = [k for k, t in toks.items() if max(Counter(zip(t, t[1:])).values(), default=0) > 1]
    return {"captions": len(toks), "distinct_words": len({w for t in toks.values() for w in t}),
            "shirt": round(100 * len(shirt) / n, 1), "unsupported_shirt": round(100 * len(unsupported_shirt) / n, 1),
            "unsupported_clothing": round(100 * sum(unsupported_clothing(t, refs[k]) for k, t in toks.items()) / n, 1),
            "repeated_bigram": round(100 * len(bigram_repeat) / n, 1),
            "most_repeated": [[c, k] for c, k in Counter(results.values()).most_common(top)]}


def diagnostics_markdown(d: dict) -> str:
    """The diagnostics as the lines of a model card."""
    rows = "\n".join(f"| {k} | {c} |" for c, k in d["most_repeated"])
    return (f"Distinct words {d['distinct_words']} in {d['captions']} captions; a shirt in {d['shirt']}% of them "
            f"({d['unsupported_shirt']}% with no shirt in any reference); clothing no reference supports in "
            f"{d['unsupported_clothing']}%; a repeated word pair in {d['repeated_bigram']}%.\n\n"
            f"| images | most repeated captions |\n|---|---|\n{rows}\n")


def evaluate_bundle(model_dir: Path, data: Path, split: str = "val", options: DecodeOptions = DecodeOptions(),
                    batch_size: int = 32, limit: int | None = None, device: str = "auto",
                    write: bool = True, on_progress=None, captions_out: Path | None = None,
                    df_from: tuple[Path, str] | None = None) -> dict:
    """Caption every image of a split with a bundle, score against the references, store in metrics.json.

    Only the split's photos that are in the folder are captioned and scored (a caption file of 5,000 photos
    beside 11 of them scores those 11; the figures say how many). `df_from` (data, split): CIDEr is also given
    with its document frequencies from that split's references plus these, as "CIDEr (df ...)": on a few photos
    the plain CIDEr is noisy, because its document frequencies come from those few photos' references alone."""
    from core.bundle.store import update_metrics
    from core.data.datasets import load_split
    from core.nn.captioner import Captioner

    items, missing = load_split(data, split)  # the photos present, and how many listed are not
    items = items[:limit] if limit else items
    captioner = Captioner(model_dir, device=device)
    results = captioner.caption([(str(it.path), it.path) for it in items], options=options, batch_size=batch_size,
                                on_progress=on_progress)
    refs = {str(it.path): it.captions for it in items}
    hyps = {r.image: r.caption for r in results if not r.error}
    metrics = score_captions(refs, hyps)
    metrics.update({"images": len(hyps), "distinct_captions": len(set(hyps.values())), "beam": options.beam,
                    "split": f"{Path(data).name}/{split}", "tokenizer": "PTB" if java_available() else "python",
                    "diagnostics": caption_diagnostics(hyps, refs)})
    if missing:
        metrics["photos_not_here"] = missing  # listed in the caption file, not in the folder
    if df_from:
        from core.evaluate.metrics import CorpusCider

        wider = [it.captions for it in load_split(Path(df_from[0]), df_from[1])[0]]
        cider = CorpusCider(wider + [refs[k] for k in hyps])
        scores = cider(list(hyps.values()), [refs[k] for k in hyps])
        metrics[f"CIDEr (df {Path(df_from[0]).name}/{df_from[1]} + these)"] = round(float(scores.mean()) * 100, 2)
    if captions_out:  # for tools/contact_sheet.py and for reading the captions themselves
        from core.base.files import atomic_write_json

        atomic_write_json(Path(captions_out), {"model": str(model_dir), "split": split, "beam": options.beam,
                                                "captions": hyps})
    if write:
        update_metrics(model_dir, {f"{Path(data).name}/{split}": metrics})
    return metrics


def _data_split(text: str) -> tuple[Path, str]:
    """"../data/flickr8k:val" -> (Path, "val"); the split is "val" when not given (a Windows drive letter stays)."""
    head, sep, tail = text.rpartition(":")
    if sep and tail and "/" not in tail and "\\" not in tail and len(head) > 1:
        return Path(head), tail
    return Path(text), "val"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model bundle folder (default: models/default)")
    p.add_argument("--data", required=True, help="dataset folder in COCO or Flickr layout")
    p.add_argument("--split", default="val")
    p.add_argument("--beam", type=int, default=DecodeOptions.beam)
    p.add_argument("--max-len", type=int, default=DecodeOptions.max_len)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="score only the first N images")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-write", action="store_true", help="do not store the metrics in the bundle")
    p.add_argument("--captions-out", type=Path, default=None, help="also write every caption to this JSON file")
    p.add_argument("--cider-df", default=None, metavar="DATA[:SPLIT]",
                   help="also give CIDEr with document frequencies from this dataset split's references plus these "
                        "(a few photos alone make CIDEr noisy), e.g. ../shared/data/flickr8k:val")
    args = p.parse_args(argv)
    try:  # the decoding flags as one DecodeOptions; the other options keep their defaults (object words on)
        options = DecodeOptions(beam=args.beam, max_len=args.max_len)
    except ConfigError as e:
        p.error(str(e))
    from core.bundle.store import DEFAULT_MODEL

    metrics = evaluate_bundle(Path(args.model or DEFAULT_MODEL), Path(args.data), args.split, options,
                              args.batch_size, args.limit, args.device, write=not args.no_write, captions_out=args.captions_out,
                              df_from=_data_split(args.cider_df) if args.cider_df else None,
                              on_progress=lambda d, n: print(f"\rcaptioned {d}/{n}", end="", file=sys.stderr))
    print(file=sys.stderr)
    print(json.dumps(metrics, indent=2))
    return 0
