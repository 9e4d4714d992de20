import csv
import io
import subprocess
import sys

import pytest

from conftest import ROOT, make_image
from core.caption import Captioner, CaptionResult, csv_bytes


def test_overfit_model_captions_its_images(tiny_bundle, tmp_path):
    """A tiny model trained on the fixture data must say what each image shows."""
    cap = Captioner(tiny_bundle, device="cpu")
    names = [("red", "square"), ("blue", "stripe"), ("yellow", "square"), ("green", "stripe")]
    items = [(f"{c}-{s}", make_image(tmp_path / f"{c}{s}.png", c, s, seed=99)) for c, s in names]
    results = cap.caption(items, beam=3)
    assert [r.caption for r in results] == [f"a {c} {s}" for c, s in names]
    assert all(r.error is None and r.score is not None and len(r.alternatives) == 2 for r in results)


def test_attention_model_returns_a_heat_map_per_word(tiny_attention_bundle, tmp_path):
    cap = Captioner(tiny_attention_bundle, device="cpu")
    assert cap.has_attention
    r = cap.caption([("x", make_image(tmp_path / "x.png", "blue", "square"))])[0]
    assert r.caption == "a blue square"
    assert r.attention.shape == (3, 7, 7)


def test_bad_files_fail_alone(tiny_bundle, tmp_path):
    good = make_image(tmp_path / "good.png", "red", "square")
    truncated = (tmp_path / "t.png")
    truncated.write_bytes(good.read_bytes()[:60])
    items = [("empty.jpg", b""), ("good.png", good), ("notes.txt", b"hello"), ("t.png", truncated),
             ("good2.png", good.read_bytes())]
    progress = []
    results = Captioner(tiny_bundle).caption(items, batch_size=2, on_progress=lambda d, n: progress.append((d, n)))
    assert [r.image for r in results] == [n for n, _ in items]
    assert [bool(r.error) for r in results] == [True, False, True, True, False]
    assert "empty" in results[0].error and results[1].caption == "a red square" == results[4].caption
    assert progress[-1] == (5, 5)


def test_csv_neutralises_formulas_but_keeps_numbers():
    rows = [CaptionResult("=cmd|' /C calc'!A0", "+a caption", -0.5, [("@b", -1.0)], None),
            CaptionResult("x.jpg", "", None, [], "-not an image")]
    data = csv_bytes(rows)
    assert data.startswith(b"\xef\xbb\xbf")  # UTF-8 byte-order mark: Excel on Windows reads the file as UTF-8
    parsed = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert parsed[0] == ["image", "caption", "score", "alternatives", "error", "tags", "confidence", "check"]
    assert parsed[1] == ["'=cmd|' /C calc'!A0", "'+a caption", "-0.5000", "'@b", "", "", "", ""]
    assert parsed[2][4] == "'-not an image"


def test_command_line_writes_a_csv(tiny_bundle, tmp_path):
    folder = tmp_path / "photos"
    make_image(folder / "sub" / "a.png", "green", "square")
    (folder / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "captions.csv"
    proc = subprocess.run([sys.executable, "-m", "core.caption", str(folder), "--model", str(tiny_bundle),
                           "--out", str(out), "--beam", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open(encoding="utf-8-sig")))
    assert [r["image"].endswith(n) for r, n in zip(rows, ["broken.jpg", "a.png"])] == [True, True]
    assert rows[0]["error"] and rows[1]["caption"] == "a green square"


def test_accented_names_survive_the_csv():
    data = csv_bytes([CaptionResult("café_été.jpg", "un chien", -0.4)])
    assert data.decode("utf-8-sig").splitlines()[1] == "café_été.jpg,un chien,-0.4000,,,,,"


def test_k_captions_are_the_top_beams_and_min_len_is_kept(tiny_bundle, tmp_path):
    cap = Captioner(tiny_bundle, device="cpu")
    item = [("red", make_image(tmp_path / "r.png", "red", "square"))]
    r = cap.caption(item, beam=1, num_captions=4)[0]
    assert r.caption == "a red square" and len(r.alternatives) == 3  # the beam is widened to K
    assert len({r.caption, *(c for c, _ in r.alternatives)}) == 4
    assert r.score >= max(s for _, s in r.alternatives)
    longer = cap.caption(item, beam=3, min_len=5, max_len=8)[0]
    assert len(longer.caption.split()) >= 5


def test_sampled_captions_with_top_p(tiny_bundle, tmp_path):
    import torch

    torch.manual_seed(0)
    cap = Captioner(tiny_bundle, device="cpu")
    r = cap.caption([("red", make_image(tmp_path / "r.png", "red", "square"))], num_captions=5, top_p=0.9)[0]
    assert r.caption and 1 + len(r.alternatives) <= 5  # identical samples are kept once
    narrow = cap.caption([("red", tmp_path / "r.png")], num_captions=5, top_p=1e-6)[0]
    assert narrow.caption == "a red square" and not narrow.alternatives  # a nucleus of one word is greedy


def test_csv_has_tags_confidence_and_the_check_flag():
    r = CaptionResult("cat.jpg", "a cat", -1.2, [], None, tags=[("cat", 0.96), ("bed", 0.12)], confidence=0.31,
                      check=True)
    parsed = list(csv.reader(io.StringIO(csv_bytes([r]).decode("utf-8-sig"))))
    assert parsed[1][5:] == ["cat 0.96; bed 0.12", "0.31", "check this one"]


def test_overlapped_decoding_gives_the_same_results_in_order(tiny_attention_bundle, tmp_path):
    """iter_captions decodes a batch in a thread while the next is encoded: the same results, in the same
    batches and order, as one batch after the other; bad files still fail alone; closing early is clean."""
    good = [make_image(tmp_path / f"{c}.png", c, s) for c, s in [("red", "square"), ("blue", "stripe"),
                                                                  ("yellow", "square"), ("green", "stripe")]]
    items = [("a.png", good[0]), ("bad.jpg", b"not an image"), ("b.png", good[1]), ("c.png", good[2]),
             ("d.png", good[3]), ("e.png", good[0].read_bytes())]
    cap = Captioner(tiny_attention_bundle, device="cpu")
    runs = {}
    for overlap in (False, True):
        cap.overlap = overlap
        batches = list(cap.iter_captions(items, batch_size=2))
        runs[overlap] = [[(r.image, r.caption, r.score, r.error) for r in b] for b in batches]
    assert runs[True] == runs[False]
    assert [len(b) for b in runs[True]] == [2, 2, 2] and runs[True][0][1][3]
    gen = cap.iter_captions(items, batch_size=2)
    first = next(gen)
    gen.close()  # a Cancel after the first batch: the batch being decoded finishes, nothing hangs
    assert [r.image for r in first] == ["a.png", "bad.jpg"]


def test_a_transformer_trained_by_image_groups_saves_in_fp16_loads_and_captions(tmp_path):
    """--decoder transformer end to end: trained (whole images a batch), published, stored in fp16, loaded by the
    app's Captioner: right captions, a heat map per word (the last layer's cross-attention), beam 1 == greedy."""
    import json

    from conftest import make_flickr, tiny_train_config
    from core.bundle import load_bundle, save_bundle
    from core.train import run

    data = make_flickr(tmp_path / "flickr")
    cfg = tiny_train_config(data, tmp_path, decoder="transformer", hidden_dim=64, num_layers=2, num_heads=4,
                            epochs=40, lr=3e-3, group_by_image=True)
    bundle = run(cfg, tmp_path / "run")
    assert json.loads((bundle / "config.json").read_text())["decoder"] == "transformer"
    b = load_bundle(bundle, pretrained=False)
    half = save_bundle(tmp_path / "half", b.model, b.vocab, half=True)
    names = [("red", "square"), ("blue", "stripe"), ("green", "stripe")]
    items = [(f"{c}-{s}", make_image(tmp_path / f"{c}{s}.png", c, s, seed=99)) for c, s in names]
    for folder in (bundle, half):
        cap = Captioner(folder, device="cpu")
        assert cap.has_attention
        results = cap.caption(items, beam=3)
        assert [r.caption for r in results] == [f"a {c} {s}" for c, s in names]
        assert results[0].attention.shape == (3, 7, 7)
        assert [r.caption for r in cap.caption(items, beam=1)] == [r.caption for r in results]
