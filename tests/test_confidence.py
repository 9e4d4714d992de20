import numpy as np
import pytest

from core.caption.confidence import Calibration, _fit_logistic, fit_calibration, human_cider, per_image_cider


def test_logistic_fit_recovers_known_parameters():
    rng = np.random.default_rng(0)
    x = rng.normal(-1.0, 0.5, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(2.0 + 3.0 * x)))).astype(float)
    a, b = _fit_logistic(x, y=y)
    assert a == pytest.approx(2.0, abs=0.15) and b == pytest.approx(3.0, abs=0.2)


def test_calibration_is_monotone_flags_the_least_confident_quarter_and_round_trips():
    rng = np.random.default_rng(1)
    scores = rng.normal(-1.2, 0.4, 400)
    cider = np.clip(0.6 + 0.8 * (scores + 1.2) + rng.normal(0, 0.3, 400), 0, None)
    cal = fit_calibration(scores, cider, acceptable=0.6)
    assert cal.b > 0 and cal.confidence(-0.5) > cal.confidence(-1.5)
    flagged = np.array([cal.confidence(s) < cal.flag_below for s in scores])
    assert flagged.mean() == pytest.approx(0.25, abs=0.01)
    assert cider[flagged].mean() < cider[~flagged].mean()
    assert Calibration.from_dict(cal.to_dict()) == cal
    assert Calibration.from_dict(None) is None and Calibration.from_dict({"a": "x"}) is None


def test_per_image_cider_and_human_agreement():
    refs = {1: ["a dog runs on the grass", "a brown dog running through grass", "the dog runs"],
            2: ["a man rides a bike", "a person riding a bicycle", "a cyclist on a road"]}
    scores = per_image_cider(refs, {1: "a dog runs through the grass", 2: "a dog runs through the grass"})
    assert scores[1] > scores[2] >= 0
    assert human_cider(refs).shape == (6,)


def test_the_missed_tag_is_a_second_input_that_lowers_the_confidence():
    """Captions that leave out a confident object are often wrong even with a good beam score: the fit finds the
    weight, flags them, and an old curve (no weight) reads as before."""
    rng = np.random.default_rng(2)
    n = 2000
    scores = rng.normal(-1.2, 0.4, n)
    missed = np.where(rng.random(n) < 0.2, rng.uniform(0.5, 1.0, n), 0.0)  # a fifth leave out a sure object
    p_ok = 1 / (1 + np.exp(-(1.0 + 2.0 * (scores + 1.2) - 4.0 * missed)))
    cider = np.where(rng.random(n) < p_ok, 0.9, 0.1)
    cal = fit_calibration(scores, cider, acceptable=0.5, missed=missed)
    assert cal.c == pytest.approx(-4.0, abs=0.8) and cal.b == pytest.approx(2.0, abs=0.5)
    assert cal.confidence(-1.0, missed=0.96) < cal.confidence(-1.0) - 0.3
    flagged = np.array([cal.confidence(s, m) < cal.flag_below for s, m in zip(scores, missed)])
    assert flagged.mean() == pytest.approx(0.25, abs=0.01) and flagged[missed > 0.8].mean() > 0.8
    assert Calibration.from_dict(cal.to_dict()) == cal
    old = {k: v for k, v in cal.to_dict().items() if k != "c"}  # a bundle's curve from before the second input
    assert Calibration.from_dict(old).c == 0.0 and Calibration.from_dict(old).confidence(-1.0, 0.9) == \
        Calibration.from_dict(old).confidence(-1.0)


def test_missed_tag_is_the_likeliest_confident_object_the_caption_leaves_out():
    from core.caption.tags import missed_tag

    zebra = [("zebra", 0.96), ("horse", 0.02)]
    assert missed_tag(zebra, "two girls are sitting on a bench".split()) == 0.96
    assert missed_tag(zebra, "two zebras are standing in a field".split()) == 0.0  # a word form of the noun
    assert missed_tag([("cat", 0.4)], "a man on a bench".split()) == 0.0  # not confident enough
    assert missed_tag([("jersey", 0.9)], "a man in a red shirt".split()) == 0.0  # not a noun captions must name
    assert missed_tag([("dog", 0.8), ("ball", 0.6)], "a dog runs".split()) == 0.6


def test_the_fitting_tool_captions_through_the_app_and_writes_a_curve_the_captioner_reads(tiny_bundle, tmp_path,
                                                                                          capsys):
    import shutil
    import sys

    from conftest import ROOT, make_flickr
    from core.nn.captioner import Captioner

    sys.path.insert(0, str(ROOT / "tools"))
    from fit_confidence import main

    model = tmp_path / "model"
    shutil.copytree(tiny_bundle, model)
    data = make_flickr(tmp_path / "flickr", per_class=3)
    assert main(["--data", str(data), "--split", "val", "--model", str(model), "--write",
                 "--out", str(tmp_path / "caps.json"), "--photos", str(data / "images")]) == 0
    out = capsys.readouterr().out
    assert "held-out half, score + missed tag" in out and "stored in" in out
    cal = Captioner(model, device="cpu").calibration
    assert cal is not None and cal.images == 12
    import json

    rows = json.loads((tmp_path / "caps.json").read_text())
    assert len(rows) == 12 and {"caption", "score", "missed", "cider", "confidence"} <= set(rows[0])
