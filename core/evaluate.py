"""Caption metrics with pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr), and `python -m core.evaluate`.

Scores are reported x100 (BLEU-4 22.0 means 0.220), as captioning papers do. The PTB tokenizer and
METEOR need Java; without it, captions are tokenised in Python and METEOR is left out.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer, cook_refs
from pycocoevalcap.rouge.rouge import Rouge

from .vocabulary import tokenize


def java_available() -> bool:
    return shutil.which("java") is not None


def _tokenize_all(captions: dict, use_java: bool) -> dict:
    if use_java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        with redirect_stdout(io.StringIO()):
            return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {k: [" ".join(tokenize(c)) for c in v] for k, v in captions.items()}


def score_captions(references: dict, results: dict, java: bool | None = None, fast: bool = False) -> dict:
    """references {image: [caption, ...]}, results {image: caption} -> {"BLEU-1": ..., "CIDEr": ...} (x100).

    fast=True computes BLEU and CIDEr only with the Python tokenizer (per-epoch validation).
    """
    assert set(results) <= set(references), "every result needs references"
    assert all(len(references[k]) > 0 for k in results), "an image without references"
    use_java = java_available() if java is None else java
    use_java = use_java and not fast
    gts = _tokenize_all({k: references[k] for k in results}, use_java)
    res = _tokenize_all({k: [v] for k, v in results.items()}, use_java)
    scorers = [(Bleu(4), ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"]), (Cider(), ["CIDEr"])]
    if not fast:
        scorers.insert(1, (Rouge(), ["ROUGE-L"]))
        if use_java:
            from pycocoevalcap.meteor.meteor import Meteor

            scorers.insert(1, (Meteor(), ["METEOR"]))
    out = {}
    for scorer, names in scorers:
        with redirect_stdout(io.StringIO()):  # Bleu prints its internal ratios
            score, _ = scorer.compute_score(gts, res)
        for name, value in zip(names, score if isinstance(score, list) else [score]):
            out[name] = round(float(value) * 100, 2)
    return out


class _CorpusCiderScorer(CiderScorer):
    # pycocoevalcap sets ref_len from the scored batch; SCST needs the training corpus' value instead
    ref_len = property(lambda self: self._corpus_ref_len, lambda self, value: None)


class CorpusCider:
    """pycocoevalcap's CIDEr-D, with document frequencies taken once from a whole training corpus.

    Scoring a small batch of sampled captions then means the same thing as scoring the corpus (the SCST reward).
    """

    def __init__(self, corpus_refs: list[list[str]]):
        base = CiderScorer(n=4, sigma=6.0)
        base.crefs = [cook_refs([" ".join(tokenize(r)) for r in refs]) for refs in corpus_refs]
        base.compute_doc_freq()
        self.document_frequency = base.document_frequency
        self.ref_len = float(np.log(float(len(corpus_refs))))

    def __call__(self, candidates: list[str], refs: list[list[str]]) -> np.ndarray:
        """candidates[i] scored against refs[i] (x1, as in the SCST literature) -> (n,) array."""
        scorer = _CorpusCiderScorer(n=4, sigma=6.0)
        scorer._corpus_ref_len = self.ref_len
        scorer.document_frequency = self.document_frequency
        for cand, rs in zip(candidates, refs):
            scorer.cook_append(" ".join(tokenize(cand)), [" ".join(tokenize(r)) for r in rs])
        return np.array(scorer.compute_cider())


def evaluate_bundle(model_dir: Path, data: Path, split: str = "val", beam: int = 3, max_len: int = 20,
                    batch_size: int = 32, limit: int | None = None, device: str = "auto",
                    write: bool = True, on_progress=None) -> dict:
    """Caption every image of a split with a bundle, score against the references, store in metrics.json."""
    from .bundle import update_metrics
    from .caption import Captioner
    from .data import load_split

    items, _ = load_split(data, split)
    items = items[:limit] if limit else items
    captioner = Captioner(model_dir, device=device)
    results = captioner.caption([(str(it.path), it.path) for it in items], beam=beam, max_len=max_len,
                                batch_size=batch_size, on_progress=on_progress)
    refs = {str(it.path): it.captions for it in items}
    hyps = {r.image: r.caption for r in results if not r.error}
    metrics = score_captions(refs, hyps)
    metrics.update({"images": len(hyps), "distinct_captions": len(set(hyps.values())), "beam": beam,
                    "split": f"{Path(data).name}/{split}", "tokenizer": "PTB" if java_available() else "python"})
    if write:
        update_metrics(model_dir, {f"{Path(data).name}/{split}": metrics})
    return metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model bundle folder (default: models/default)")
    p.add_argument("--data", required=True, help="dataset folder in COCO or Flickr layout")
    p.add_argument("--split", default="val")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="score only the first N images")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-write", action="store_true", help="do not store the metrics in the bundle")
    args = p.parse_args(argv)
    from .bundle import DEFAULT_MODEL

    metrics = evaluate_bundle(Path(args.model or DEFAULT_MODEL), Path(args.data), args.split, args.beam, args.max_len,
                              args.batch_size, args.limit, args.device, write=not args.no_write,
                              on_progress=lambda d, n: print(f"\rcaptioned {d}/{n}", end="", file=sys.stderr))
    print(file=sys.stderr)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
