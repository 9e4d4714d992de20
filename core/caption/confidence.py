"""An honest confidence for a caption: the probability that it is acceptable, calibrated on a held-out split.

A caption's beam score (mean log-probability per word) ranks captions of one model but means little to a user.
`tools/fit_confidence.py` fits, on the dev split, a logistic curve from that score to the chance that the caption
is *acceptable*: that its CIDEr-D against the human references reaches what the weakest quarter of the human
captions themselves reach (each human caption scored against the other references of its image). The curve is
stored in the bundle's metrics.json under "confidence"; captions below `flag_below` (the least confident quarter
of the dev split) are flagged "check this one".

The curve has a second input where the backbone can tag photos: the probability of the likeliest confident object
the caption does not name (core.caption.tags.missed_tag). A caption of "two girls on a bench" beside a zebra tag
of 0.96 contradicts what the classifier sees, whatever its beam score; the fit learns how much that costs (issue
23). Bundles fitted before it have no such weight (c = 0) and keep their curve.
"""
from __future__ import annotations

import io
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass

import numpy as np

from core.evaluate.metrics import tokenize


@dataclass
class Calibration:
    a: float  # logit(P(acceptable)) = a + b * score + c * missed
    b: float
    acceptable: float  # per-image CIDEr-D (x1) that counts as acceptable
    flag_below: float  # confidences under this are flagged
    images: int  # how many images it was fitted on
    c: float = 0.0  # the weight of the missed tag's probability (0: a curve fitted without it)

    def confidence(self, score: float, missed: float = 0.0) -> float:
        """The chance that a caption with this beam score is acceptable, when the likeliest confident object it
        does not name has probability `missed` (0: it names every one, or the photo has none)."""
        return float(1.0 / (1.0 + np.exp(-(self.a + self.b * score + self.c * missed))))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Calibration | None":
        try:
            return cls(**{k: float(d[k]) for k in ("a", "b", "acceptable", "flag_below")}, images=int(d["images"]),
                       c=float(d.get("c", 0.0)))
        except (TypeError, KeyError, ValueError, AttributeError):
            return None  # a bundle without (or with a damaged) calibration: no confidence column, no error


def per_image_cider(refs: dict, caps: dict) -> dict:
    """refs {key: [caption, ...]}, caps {key: caption} -> {key: CIDEr-D (x1)}, document frequencies from refs."""
    from pycocoevalcap.cider.cider import Cider

    keys = list(caps)
    gts = {k: [" ".join(tokenize(r)) for r in refs[k]] for k in keys}
    res = {k: [" ".join(tokenize(caps[k]))] for k in keys}
    with redirect_stdout(io.StringIO()):
        _, scores = Cider().compute_score(gts, res)
    return dict(zip(keys, map(float, scores)))


def human_cider(refs: dict) -> np.ndarray:
    """Each human caption scored against the other references of its image (leave one out) -> (n,)."""
    gts, res = {}, {}
    for k, rs in refs.items():
        for j, r in enumerate(rs):
            if len(rs) > 1:
                gts[(k, j)], res[(k, j)] = rs[:j] + rs[j + 1:], r
    return np.array(list(per_image_cider(gts, res).values()))


def _fit_logistic(*xs: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, ...]:
    """Maximum-likelihood w of P(y=1 | x) = sigmoid(w0 + w1 x1 + ...) by Newton's method (a few parameters)."""
    X = np.stack([np.ones_like(xs[0]), *xs], 1)  # (n, 1 + inputs)
    w = np.zeros(X.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-X @ w))  # (n,)
        H = X.T @ (X * (p * (1 - p) + 1e-6)[:, None]) + 1e-6 * np.eye(len(w))  # ridge keeps it invertible
        step = np.linalg.solve(H, X.T @ (y - p))
        w += step
        if np.abs(step).max() < 1e-8:
            break
    return tuple(float(v) for v in w)


def fit_calibration(scores, cider, acceptable: float | None = None, refs: dict | None = None,
                    flag_quantile: float = 0.25, missed=None) -> Calibration:
    """scores (n,) beam scores, cider (n,) per-image CIDEr-D of those captions -> Calibration; missed (n,)
    (optional): each caption's missed-tag probability, the curve's second input.

    `acceptable` defaults to the 25th percentile of the human captions' leave-one-out CIDEr when `refs` is
    given, else to the median of `cider`. `flag_below` is the confidence under which `flag_quantile` of these
    captions fall.
    """
    scores, cider = np.asarray(scores, float), np.asarray(cider, float)
    if acceptable is None:
        acceptable = float(np.quantile(human_cider(refs), 0.25)) if refs else float(np.median(cider))
    y = (cider >= acceptable).astype(float)
    if missed is None:
        (a, b), c, missed = _fit_logistic(scores, y=y), 0.0, np.zeros_like(scores)
    else:
        missed = np.asarray(missed, float)
        a, b, c = _fit_logistic(scores, missed, y=y)
    cal = Calibration(a, b, acceptable, 0.0, len(scores), c)
    conf = np.array([cal.confidence(s, m) for s, m in zip(scores, missed)])
    cal.flag_below = float(np.quantile(conf, flag_quantile))
    return cal
