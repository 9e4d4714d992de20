import json

import pytest
import torch

from core.bundle.store import BundleError, get_active, list_bundles, new_bundle_dir, set_active
from core.nn.weights import load_bundle, save_bundle
from core.data.vocabulary import Vocabulary
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
from core.bundle.store import BundleInfo, get_active, headline_metrics, list_bundles, set_active
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


def test_the_shape_check_builds_on_meta_without_importing_dynamo(tmp_path):
    """The check builds the model on the meta device with its initialisers skipped: torch's meta kernel for
    normal_ (nn.Embedding's init) would import torch._dynamo, 1.7 s on 2 cores before a hostile config is refused."""
    import subprocess
    import sys
    from pathlib import Path

    _save(tmp_path / "b")
    code = f"""
import sys
from pathlib import Path
from core.bundle.store import check_shapes, read_config, weight_shapes
folder = Path({str(tmp_path / "b")!r})
check_shapes(folder, read_config(folder), weight_shapes(folder))
assert "torch._dynamo" not in sys.modules
print("ok")
"""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_backbone_names_match_the_registry():
    from core.nn.backbones import BACKBONES
    from core.base.config import BACKBONE_NAMES

    assert tuple(BACKBONES) == BACKBONE_NAMES


def test_damaged_folders_are_listed_as_unusable_and_the_others_work(tmp_path):
    _save(tmp_path / "default")
    _save(tmp_path / "bad-metrics")
    (tmp_path / "bad-metrics" / "metrics.json").write_bytes(b"\xff\xfe{not json")
    _save(tmp_path / "list-config")
    (tmp_path / "list-config" / "config.json").write_text("[]")
    _save(tmp_path / "latin1-card")
    (tmp_path / "latin1-card" / "card.md").write_bytes("# Modèle entraîné".encode("latin-1"))
    _save(tmp_path / "no-vocab")
    (tmp_path / "no-vocab" / "vocab.json").unlink()
    found = {b.name: b for b in list_bundles(tmp_path)}
    assert set(found) == {"default", "bad-metrics", "list-config", "latin1-card", "no-vocab"}
    assert found["default"].usable and found["latin1-card"].usable and "Mod" in found["latin1-card"].card
    assert found["bad-metrics"].usable and found["bad-metrics"].metrics == {}
    assert "metrics.json" in found["bad-metrics"].notes[0]
    assert not found["list-config"].usable and "config.json must hold a JSON object" in found["list-config"].problem
    assert not found["no-vocab"].usable and "vocab.json is missing" in found["no-vocab"].problem
    assert load_bundle(tmp_path / "bad-metrics", pretrained=False).metrics == {}


def _edit(folder, name, change):
    path = folder / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("name, change, message", [
    ("vocab.json", lambda d: d["tokens"].__setitem__(0, "<blank>"), r"vocab.json: tokens must start with the special"),
    ("vocab.json", lambda d: d.__setitem__("tokens", d["tokens"][:4]), r"vocab.json: tokens holds no words"),
    ("vocab.json", lambda d: d.__setitem__("tokens", "abc"), r"vocab.json: tokens must be a list"),
    ("config.json", lambda d: d.__setitem__("dropout", "high"), r"config.json: dropout is 'high'"),
    ("config.json", lambda d: d.__setitem__("embed_dim", -16), r"config.json: embed_dim is -16; it must be a whole"),
    ("config.json", lambda d: d.__setitem__("hidden_dim", 80_000), r"config.json: hidden_dim is 80000"),
    ("config.json", lambda d: d.__setitem__("vocab_size", "12"), r"config.json: vocab_size is '12'"),
    ("config.json", lambda d: d.__setitem__("hidden_dim", 8000), r"model.safetensors: weight .* has shape .*hidden_dim 8000"),
])
def test_bad_values_fail_in_plain_words_before_the_weights_are_loaded(tmp_path, monkeypatch, name, change, message):
    import safetensors.torch

    _save(tmp_path / "b")
    _edit(tmp_path / "b", name, change)

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded before the folder was checked")

    monkeypatch.setattr(safetensors.torch, "load_file", no_loading)
    with pytest.raises(BundleError, match=message):
        load_bundle(tmp_path / "b", pretrained=False)
    assert not list_bundles(tmp_path)[0].usable or "shape" in message  # listing says so too (shapes need torch)


def test_the_pickle_check_reads_only_the_first_bytes(tmp_path, monkeypatch):
    from pathlib import Path

    _save(tmp_path / "b")
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self.name} was read whole"))
    assert [b.usable for b in list_bundles(tmp_path)] == [True]


def test_partial_and_hidden_folders_are_not_models_and_stale_partials_go(tmp_path):
    import os
    import time

    _save(tmp_path / "mine")
    _save(tmp_path / ".mine-2.partial")  # what an interrupted publish leaves
    _save(tmp_path / "other.partial")
    _save(tmp_path / ".hidden")
    assert [b.name for b in list_bundles(tmp_path)] == ["mine"]
    with pytest.raises(BundleError):
        set_active(".hidden", tmp_path)
    old = time.time() - 3600
    os.utime(tmp_path / ".mine-2.partial", (old, old))
    new_bundle_dir("mine", tmp_path)  # a publish starts: the debris of the interrupted one goes
    assert not (tmp_path / ".mine-2.partial").exists()
    assert (tmp_path / "other.partial").exists()  # recent: maybe a publish running now
    assert (tmp_path / ".hidden").exists()


def _resave_with_header_length(folder, remainder: int):
    """Rewrite model.safetensors with the same tensors, its metadata padded until the JSON header's length is
    `remainder` mod 256: the first byte of the file is then that remainder (0x80 = 128 is a pickle's first byte)."""
    from safetensors.torch import load_file, save

    path = folder / "model.safetensors"
    tensors = load_file(path)
    for pad in range(300):
        data = save(tensors, metadata={"format": "caption-bundle/1", "note": "x" * pad})
        if int.from_bytes(data[:8], "little") % 256 == remainder:
            path.write_bytes(data)
            return data
    raise AssertionError("no padding gave that header length")


def test_a_safetensors_file_whose_first_byte_is_0x80_is_not_taken_for_a_pickle(tmp_path):
    m, _ = _save(tmp_path / "b")
    data = _resave_with_header_length(tmp_path / "b", 128)
    assert data[0] == 0x80  # what a pickle (protocol >= 2) starts with
    b = load_bundle(tmp_path / "b", pretrained=False)
    feats, caps = torch.randn(1, 49, 1280), torch.randint(4, 12, (1, 5))
    with torch.no_grad():
        assert torch.allclose(m(feats, caps)[0], b.model(feats, caps)[0], atol=1e-6)
    assert [x.usable for x in list_bundles(tmp_path)] == [True]


def test_a_file_that_is_neither_safetensors_nor_a_pickle_is_refused_in_plain_words(tmp_path):
    _save(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(BundleError, match="cannot be read as safetensors"):
        load_bundle(tmp_path / "b", pretrained=False)


LIST_IN_A_CHILD = """
import json, sys
from pathlib import Path
from core.bundle.store import get_active, list_bundles
found = list_bundles(Path(sys.argv[1]))
print(json.dumps({"bundles": {b.name: [b.usable, b.problem, b.card] for b in found},
                  "active": get_active(Path(sys.argv[1])).name}))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="FIFOs are POSIX")
def test_a_hostile_model_folder_never_hangs_the_listing_and_says_why(tmp_path):
    """A FIFO config.json (an open() for reading waits for a writer forever) and weights linked to /dev/zero (its
    size reads 0, a read never ends): the listing comes back at once, naming each problem; the other models work."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    _save(tmp_path / "default")
    _save(tmp_path / "fifo-config")
    (tmp_path / "fifo-config" / "config.json").unlink()
    os.mkfifo(tmp_path / "fifo-config" / "config.json")
    _save(tmp_path / "zero-weights")
    (tmp_path / "zero-weights" / "model.safetensors").unlink()
    (tmp_path / "zero-weights" / "model.safetensors").symlink_to("/dev/zero")
    _save(tmp_path / "fifo-vocab")
    (tmp_path / "fifo-vocab" / "vocab.json").unlink()
    os.mkfifo(tmp_path / "fifo-vocab" / "vocab.json")
    _save(tmp_path / "fifo-card")
    (tmp_path / "fifo-card" / "card.md").unlink()
    os.mkfifo(tmp_path / "fifo-card" / "card.md")
    _save(tmp_path / "zero-metrics")
    (tmp_path / "zero-metrics" / "metrics.json").unlink()
    (tmp_path / "zero-metrics" / "metrics.json").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "active.json")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", LIST_IN_A_CHILD, str(tmp_path)], cwd=root, capture_output=True,
                         text=True, timeout=60)  # before the fix: a TimeoutExpired here
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    found = listing["bundles"]
    assert found["default"][0] and listing["active"] == "default"
    assert not found["fifo-config"][0] and "config.json is not a regular file (it is a named pipe" in found["fifo-config"][1]
    assert not found["zero-weights"][0] and "model.safetensors is not a regular file (it is a character device" in found["zero-weights"][1]
    assert not found["fifo-vocab"][0] and "vocab.json is not a regular file" in found["fifo-vocab"][1]
    assert found["fifo-card"][0] and found["fifo-card"][2] == ""  # a card is for show: the model still works
    assert found["zero-metrics"][0]
    with pytest.raises(BundleError, match="not a regular file"):
        load_bundle(tmp_path / "zero-weights", pretrained=False)


def test_a_safetensors_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """One safetensors header length in 256 starts with the byte a pickle starts with (a fine-tuned bundle's did)."""
    import struct

    from safetensors.torch import save

    from core.bundle.store import _check_not_pickle

    for pad in range(300):
        data = save({"w": torch.zeros(2)}, metadata={"pad": "x" * pad})
        if data[0] == 0x80:
            break
    assert data[0] == 0x80 and struct.unpack("<Q", data[:8])[0] % 256 == 0x80
    (tmp_path / "model.safetensors").write_bytes(data)
    _check_not_pickle(tmp_path / "model.safetensors")  # no BundleError
    (tmp_path / "pickled.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 20)
    with pytest.raises(BundleError, match="pickle"):
        _check_not_pickle(tmp_path / "pickled.safetensors")
