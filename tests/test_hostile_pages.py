"""Hostile files through the pages (AppTest): a damaged model folder is shown as unusable with its reason."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_fixtures import make_tiny_bundle

REPO = Path(__file__).resolve().parent.parent
HOME, CAPTION = str(REPO / "app.py"), str(REPO / "pages/1_Caption.py")
TIMEOUT = 120


@pytest.fixture(scope="module")
def damaged_models(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    make_tiny_bundle(models / "tiny-attention", decoder="attention")
    shutil.copytree(models / "tiny-attention", models / "default")
    (models / "default" / "config.json").write_text("[1, 2, 3]")  # hand-edited into nonsense
    shutil.copytree(models / "tiny-attention", models / "latin1")
    (models / "latin1" / "card.md").write_bytes("# Modèle".encode("latin-1"))
    (models / "latin1" / "metrics.json").write_bytes(b"{broken")
    return models


def test_home_names_a_damaged_active_model_instead_of_raising(damaged_models, monkeypatch):
    monkeypatch.setenv("CAPTION_MODELS_DIR", str(damaged_models))
    at = AppTest.from_file(HOME, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "default" in at.error[0].value and "config.json must hold a JSON object" in at.error[0].value


def test_caption_page_lists_damaged_models_with_the_reason_and_uses_the_others(damaged_models, monkeypatch):
    monkeypatch.setenv("CAPTION_MODELS_DIR", str(damaged_models))
    at = AppTest.from_file(CAPTION, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.selectbox(key="model").options == ["default", "latin1", "tiny-attention"]
    assert "cannot be used" in at.error[0].value and at.button[1].disabled
    at.selectbox(key="model").select("latin1").run()
    assert not at.exception and not at.error and not at.button[1].disabled
    at.button[1].click().run()  # Try sample images, with the model whose card and metrics are damaged
    assert not at.exception and len(at.session_state.batch["results"]) >= 2
