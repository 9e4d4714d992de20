"""The model's hyperparameters: one dataclass, saved as config.json inside every model bundle."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

DECODERS = ("show_tell", "attention")
# the backbones core.backbones registers, named here so a config can be checked without importing torch
BACKBONE_NAMES = ("efficientnet_lite0", "efficientnet_lite2", "resnet50", "resnet101")


@dataclass
class ModelConfig:
    vocab_size: int = 0
    backbone: str = "efficientnet_lite0"
    decoder: str = "attention"  # "show_tell" (Vinyals et al. 2015) or "attention" (Xu et al. 2015, soft)
    embed_dim: int = 256
    hidden_dim: int = 512
    attention_dim: int = 256
    feature_proj_dim: int = 512  # attention decoder: CNN channels are projected to this width first
    dropout: float = 0.3
    fine_tune: bool = False  # True: the backbone's weights are trained too and saved in the bundle
    max_len: int = 20  # longest caption (in words) seen in training; the default for decoding

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
