import json

import pytest
import torch

from core.bundle import (BundleError, get_active, list_bundles, load_bundle, new_bundle_dir, save_bundle, set_active)
from core.vocabulary import Vocabulary
from test_model import tiny_model


def _save(folder, decoder="attention", half=False):
    vocab = Vocabulary.build(["a b c d e f g h"], min_count=1)  # 12 tokens with the specials
    m = tiny_model(decoder, vocab_size=len(vocab), with_encoder=True)
    save_bundle(folder, m, vocab, metrics={"val": {"CIDEr": 1.0}}, card="# card", half=half)
    return m, vocab


@pytest.mark.parametrize("half", [False, True])
def test_round_trip_gives_the_same_outputs(tmp_path, half):
    m, vocab = _save(tmp_path / "b", half=half)
    b = load_bundle(tmp_path / "b", pretrained=False)
    assert b.vocab.itos == vocab.itos and b.config == m.cfg and b.metrics == {"val": {"CIDEr": 1.0}}
    feats, caps = torch.randn(2, 49, 1280), torch.randint(4, 12, (2, 5))
    with torch.no_grad():
        expected, got = m(feats, caps)[0], b.model(feats, caps)[0]
    assert torch.allclose(expected, got, atol=1e-2 if half else 1e-6)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "card.md", "config.json", "metrics.json", "model.safetensors", "vocab.json"]


def test_refuses_a_pickle_even_under_the_safetensors_name(tmp_path):
    _save(tmp_path / "b")
    torch.save({"w": torch.zeros(2)}, tmp_path / "b" / "model.safetensors")
    with pytest.raises(BundleError, match="pickle"):
        load_bundle(tmp_path / "b", pretrained=False)


def test_refuses_a_folder_of_pickled_weights(tmp_path):
    (tmp_path / "old").mkdir()
    torch.save({"w": torch.zeros(2)}, tmp_path / "old" / "decoder.pkl")
    with pytest.raises(BundleError, match="pickled weights"):
        load_bundle(tmp_path / "old")


def test_checks_that_the_parts_fit(tmp_path):
    _save(tmp_path / "b")
    vocab = json.loads((tmp_path / "b" / "vocab.json").read_text())
    vocab["tokens"].append("extra")
    (tmp_path / "b" / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(BundleError, match="vocab.json has 13 words"):
        load_bundle(tmp_path / "b", pretrained=False)

    _save(tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    (tmp_path / "c" / "config.json").write_text(json.dumps({**cfg, "decoder": "show_tell"}))
    with pytest.raises(BundleError, match="does not fit config.json"):
        load_bundle(tmp_path / "c", pretrained=False)
    (tmp_path / "c" / "config.json").write_text(json.dumps({**cfg, "backbone": "vgg"}))
    with pytest.raises(BundleError, match="backbone 'vgg'"):
        load_bundle(tmp_path / "c", pretrained=False)


def test_listing_active_model_and_never_overwriting(tmp_path):
    _save(tmp_path / "default")
    _save(tmp_path / "mine")
    (tmp_path / "junk").mkdir()
    assert [b.name for b in list_bundles(tmp_path)] == ["default", "mine"]
    assert get_active(tmp_path) == tmp_path / "default"
    set_active("mine", tmp_path)
    assert get_active(tmp_path) == tmp_path / "mine"
    with pytest.raises(BundleError):
        set_active("../etc", tmp_path)
    assert new_bundle_dir("mine", tmp_path) == tmp_path / "mine-2"
    assert new_bundle_dir("../x y", tmp_path).parent == tmp_path


def test_listing_works_without_torch(tmp_path):
    """The Home and Caption pages list models; that path must not import torch (blocked here)."""
    import subprocess
    import sys
    from pathlib import Path

    _save(tmp_path / "default")
    _save(tmp_path / "mine")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("[1, 2]")
    code = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from pathlib import Path
from core.bundle import BundleInfo, get_active, headline_metrics, list_bundles, set_active
root = Path({str(tmp_path)!r})
found = list_bundles(root)
assert [(b.name, b.usable) for b in found] == [("default", True), ("broken", False), ("mine", True)], found
assert found[0].config["decoder"] == "attention" and found[0].card == "# card"
set_active("mine", root)
assert get_active(root) == root / "mine"
assert headline_metrics({{"val_greedy": {{"CIDEr": 1.0}}}})[1] == {{"CIDEr": 1.0}}
assert "torch" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
print("ok")
"""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_backbone_names_match_the_registry():
    from core.backbones import BACKBONES
    from core.config import BACKBONE_NAMES

    assert tuple(BACKBONES) == BACKBONE_NAMES
