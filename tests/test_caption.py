import csv
import io
import subprocess
import sys

import pytest

from conftest import ROOT, make_image
from core.base.config import DecodeOptions
from core.nn.captioner import Captioner
from core.caption.result import CaptionResult
from core.caption.library import csv_bytes


def test_overfit_model_captions_its_images(tiny_bundle, tmp_path):
    """A tiny model trained on the fixture data must say what each image shows."""
    cap = Captioner(tiny_bundle, device="cpu")
    names = [("red", "square"), ("blue", "stripe"), ("yellow", "square"), ("green", "stripe")]
    items = [(f"{c}-{s}", make_image(tmp_path / f"{c}{s}.png", c, s, seed=99)) for c, s in names]
    results = cap.caption(items, DecodeOptions(beam=3))
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


def test_several_paths_follow_the_finder_rules(tmp_path, capsys):
    """Regression: given several paths, the command line listed hidden files (macOS's ._x.jpg) and ignored
    --include/--exclude, which a single folder honoured; both now go through core.data.images.find_images."""
    from core.caption import cli

    make_image(tmp_path / "a" / "x_thumb.png", "red", "square")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "._y.jpg").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble: metadata, no picture
    assert cli.main([str(tmp_path / "a"), str(tmp_path / "b"), "--exclude", "*_thumb.*", "--device", "cpu"]) == 1
    assert "no images found" in capsys.readouterr().err  # before any model is loaded


def test_accented_names_survive_the_csv():
    data = csv_bytes([CaptionResult("café_été.jpg", "un chien", -0.4)])
    assert data.decode("utf-8-sig").splitlines()[1] == "café_été.jpg,un chien,-0.4000,,,,,"


def test_k_captions_are_the_top_beams_and_min_len_is_kept(tiny_bundle, tmp_path):
    cap = Captioner(tiny_bundle, device="cpu")
    item = [("red", make_image(tmp_path / "r.png", "red", "square"))]
    r = cap.caption(item, DecodeOptions(beam=1, num_captions=4))[0]
    assert r.caption == "a red square" and len(r.alternatives) == 3  # the beam is widened to K
    assert len({r.caption, *(c for c, _ in r.alternatives)}) == 4
    assert r.score >= max(s for _, s in r.alternatives)
    longer = cap.caption(item, DecodeOptions(beam=3, min_len=5, max_len=8))[0]
    assert len(longer.caption.split()) >= 5


def test_sampled_captions_with_top_p(tiny_bundle, tmp_path):
    import torch

    torch.manual_seed(0)
    cap = Captioner(tiny_bundle, device="cpu")
    sampled = DecodeOptions(num_captions=5, top_p=0.9)
    r = cap.caption([("red", make_image(tmp_path / "r.png", "red", "square"))], sampled)[0]
    assert r.caption and 1 + len(r.alternatives) <= 5  # identical samples are kept once
    narrow = cap.caption([("red", tmp_path / "r.png")], DecodeOptions(num_captions=5, top_p=1e-6))[0]
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


# ------------------------------------------------------------------------- the command line: model and progress

def _cli(args, env_models=None, **kw):
    import os

    env = dict(os.environ, **({"CAPTION_MODELS_DIR": str(env_models)} if env_models else {}))
    return subprocess.run([sys.executable, "-m", "core.caption", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env, **kw)


@pytest.mark.slow
def test_command_line_uses_the_model_made_active_in_the_app(tiny_bundle, tmp_path):
    import shutil

    from core.bundle.store import set_active

    models = tmp_path / "models"
    shutil.copytree(tiny_bundle, models / "my-model")
    folder = tmp_path / "photos"
    make_image(folder / "a.png", "green", "square")
    out = tmp_path / "c.csv"
    proc = _cli([folder, "--out", out, "--beam", "2"], env_models=models)  # no active model, no models/default
    assert proc.returncode == 2 and "cannot be used" in proc.stderr and "--model" in proc.stderr
    assert "model: default (the default model)" in proc.stderr

    set_active("my-model", models)
    proc = _cli([folder, "--out", out, "--beam", "2"], env_models=models)
    assert proc.returncode == 0, proc.stderr
    assert f"model: my-model (the model made active in the app): {models / 'my-model'}" in proc.stderr
    assert list(csv.DictReader(out.open(encoding="utf-8-sig")))[0]["caption"] == "a green square"

    proc = _cli([folder / "a.png", "--out", out, "--model", tiny_bundle], env_models=models)  # --model wins
    assert proc.returncode == 0 and f"model: {tiny_bundle.name} (--model): {tiny_bundle}" in proc.stderr


def test_command_line_progress_is_a_line_per_photo_without_a_terminal(tiny_bundle, tmp_path):
    folder = tmp_path / "photos"
    names = [f"p{k}.png" for k in range(5)]
    for k, n in enumerate(names):
        make_image(folder / n, "red", "square", seed=k)
    (folder / "p5.png").write_bytes(b"broken")
    proc = _cli([folder, "--model", tiny_bundle, "--out", tmp_path / "c.csv", "--batch-size", "4"])
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("captioned ") and "/6" in ln]
    assert [ln.split(" (")[0] for ln in lines] == [f"captioned {k}/6" for k in range(1, 7)]  # one per photo, batch of 4
    assert [ln.rsplit(": ", 1)[0].endswith("p5.png -- not captioned") for ln in lines] == [False] * 5 + [True]
    assert lines[0].endswith("): p0.png") and "photos/s" in lines[0]
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr  # no bar redrawn into a log


def test_plain_lines_also_say_how_many_photos_are_read():
    import io

    from core.caption.progress import PhotoProgress

    out = io.StringIO()  # not a terminal
    lines = PhotoProgress(2, stream=out, read_every_s=0)
    assert lines.bar is None
    lines.photo_read()
    lines.photo_read()
    lines.photos_done([("a.jpg", ""), ("b.jpg", "the file is empty")])
    assert out.getvalue().splitlines()[:2] == ["read 1/2 photos, captioning them", "read 2/2 photos, captioning them"]
    assert out.getvalue().splitlines()[3].endswith("): b.jpg -- not captioned: the file is empty")
    assert "\r" not in out.getvalue()


def test_progress_bar_on_a_terminal_moves_per_photo():
    import io

    from core.caption.progress import PhotoProgress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = PhotoProgress(3, stream=out)
    assert bar.bar is not None  # tqdm
    bar.photo_read()
    assert "read 1/3" in out.getvalue()
    bar.photos_done([("a.jpg", ""), ("b.jpg", "not an image")])
    assert bar.bar.n == 2 and bar.failed == 1
    assert "b.jpg: not an image\n" in out.getvalue()  # which photo was left out, above the bar
    bar.photos_done([("c.jpg", "")])
    bar.close()
    assert "3/3" in out.getvalue() and "captioning" in out.getvalue()


def test_tag_threshold_and_the_tags_outputs(tiny_bundle, tmp_path, monkeypatch):
    """A confident cat and a doubtful bed: the threshold decides which the CSV, metadata.jsonl and the tags file get."""
    import json

    import torch

    from core.caption.library import LibraryConfig, caption_library

    cap = Captioner(tiny_bundle, device="cpu")
    cap.can_tag = True  # the tiny model's backbone has no ImageNet head: give it one that sees a cat and a bed
    logits = torch.full((1000,), -20.0)
    logits[281], logits[831] = 4.0, 2.5  # tabby cat, studio couch -> "cat" about 0.8, the couch's noun about 0.2
    monkeypatch.setattr(type(cap.model.encoder), "classify", lambda self, feats: logits.expand(feats.size(0), -1),
                        raising=False)
    folder = tmp_path / "photos"
    make_image(folder / "a.png", "red", "square")
    make_image(folder / "sub" / "b.png", "blue", "square")

    low = cap.caption([("a", folder / "a.png")], DecodeOptions(tag_threshold=0.05))[0].tags
    high = cap.caption([("a", folder / "a.png")], DecodeOptions(tag_threshold=0.5))[0].tags
    assert [n for n, _ in low][0] == "cat" and len(low) == 2 and [n for n, _ in high] == ["cat"]
    couch = low[1][0]

    cfg = LibraryConfig(str(folder), csv=str(tmp_path / "c.csv"), jsonl=True, jsonl_tags=True, tags_ext=".tags.txt",
                        sidecar_ext=".txt", decode=DecodeOptions(tag_threshold=0.05))
    caption_library(cfg, cap)
    assert (folder / "a.tags.txt").read_text(encoding="utf-8") == f"cat, {couch}\n"
    assert (folder / "sub" / "b.tags.txt").read_text(encoding="utf-8") == f"cat, {couch}\n"
    assert (folder / "a.txt").read_text(encoding="utf-8") == "a red square\n"  # the caption sidecar is its own file
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[0] == {"file_name": "a.png", "text": "a red square", "tags": f"cat, {couch}"}
    table = list(csv.DictReader((tmp_path / "c.csv").open(encoding="utf-8-sig")))
    assert table[0]["tags"].startswith("cat 0.") and couch in table[0]["tags"]

    (folder / "a.tags.txt").unlink()  # a rerun ("skip") writes only what is missing: the tags file
    cfg = LibraryConfig(str(folder), tags_ext="tags.txt", decode=DecodeOptions(tag_threshold=0.5))
    assert caption_library(cfg, cap).done == 1
    assert (folder / "a.tags.txt").read_text(encoding="utf-8") == "cat\n"
    assert DecodeOptions().tag_threshold == 0.10  # the default of the page's slider and of --tag-threshold


def test_tags_options_are_checked():
    from core.caption.library import LibraryConfig

    with pytest.raises(ValueError, match="overwrite images"):
        LibraryConfig("x", tags_ext=".jpg")
    with pytest.raises(ValueError, match="both be .txt"):
        LibraryConfig("x", sidecar_ext=".txt", tags_ext=".txt")
    with pytest.raises(ValueError, match="between 0 and 1"):
        LibraryConfig("x", csv="c.csv", decode=DecodeOptions(tag_threshold=5))
    assert LibraryConfig("x", tags_ext="tags.txt").tags_ext == ".tags.txt"  # a tags file alone is an output


def test_two_photos_sharing_a_name_get_a_tags_file_each(tiny_bundle, tmp_path):
    from core.caption.library import LibraryConfig, caption_library

    folder = tmp_path / "photos"
    make_image(folder / "a.jpg", "red", "square")
    make_image(folder / "a.png", "blue", "square")
    make_image(folder / "b.png", "green", "square")
    caption_library(LibraryConfig(str(folder), tags_ext=".tags.txt", decode=DecodeOptions(tag_threshold=0.0)),
                    Captioner(tiny_bundle, device="cpu"))
    assert sorted(p.name for p in folder.glob("*.tags.txt")) == ["a.jpg.tags.txt", "a.png.tags.txt", "b.tags.txt"]
    assert len((folder / "b.tags.txt").read_text(encoding="utf-8").split(", ")) == 3  # threshold 0: the top 3


def test_a_transformer_trained_by_image_groups_saves_in_fp16_loads_and_captions(tmp_path):
    """--decoder transformer end to end: trained (whole images a batch), published, stored in fp16, loaded by the
    app's Captioner: right captions, a heat map per word (the last layer's cross-attention), beam 1 == greedy."""
    import json

    from conftest import make_flickr, tiny_train_config
    from core.nn.weights import load_bundle, save_bundle
    from core.train.trainer import run

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
        results = cap.caption(items, DecodeOptions(beam=3))
        assert [r.caption for r in results] == [f"a {c} {s}" for c, s in names]
        assert results[0].attention.shape == (3, 7, 7)
        assert [r.caption for r in cap.caption(items, DecodeOptions(beam=1))] == [r.caption for r in results]
