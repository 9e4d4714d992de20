"""One image's caption(s) and what comes with them, and their JSON form (the caption worker's wire format).

Torch-free (numpy only), so that the pages, which never import torch, can hold results made in another process.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class CaptionResult:
    image: str
    caption: str = ""
    score: float | None = None  # length-normalised log-probability of the caption (higher is surer)
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # the other beams, best first
    error: str | None = None
    words: list[str] = field(default_factory=list)
    attention: np.ndarray | None = None  # (len(words), grid_h, grid_w), attention models only
    tags: list[tuple[str, float]] = field(default_factory=list)  # objects the backbone's classifier sees, likeliest first
    guided: str | None = None  # the object word the caption was made to name (core.caption.tags), if any
    confidence: float | None = None  # calibrated chance that the caption is acceptable (core.caption.confidence)
    check: bool = False  # among the least confident captions: a person should look at it

    def to_json(self) -> dict:
        d = asdict(self)
        if self.attention is not None:  # 4 decimals: the heat maps are drawn, not computed with
            d["attention"] = {"shape": list(self.attention.shape),
                              "values": np.round(self.attention.astype(np.float32), 4).ravel().tolist()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "CaptionResult":
        d = dict(d)
        att = d.get("attention")
        if att is not None:
            d["attention"] = np.asarray(att["values"], dtype=np.float32).reshape(att["shape"])
        d["alternatives"] = [tuple(a) for a in d.get("alternatives", [])]
        d["tags"] = [tuple(t) for t in d.get("tags", [])]
        return cls(**d)
