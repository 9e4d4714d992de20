import numpy as np
import pytest

from core.caption.confidence import Calibration, _fit_logistic, fit_calibration, human_cider, per_image_cider


def test_logistic_fit_recovers_known_parameters():
    rng = np.random.default_rng(0)
    x = rng.normal(-1.0, 0.5, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(2.0 + 3.0 * x)))).astype(float)
    a, b = _fit_logistic(x, y)
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
