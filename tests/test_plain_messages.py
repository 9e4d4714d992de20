"""Bad input that used to end in a traceback or a message from deep inside a library: the dataset check, a dataset of
damaged images only, a resume after config.json was edited. Each now ends in plain words naming what to do."""
import json

import pytest

from conftest import make_flickr, tiny_train_config
from core.data.datasets import inspect_dataset


def test_a_captions_file_the_csv_module_refuses_is_a_problem_of_the_check(tmp_path):
    data = make_flickr(tmp_path / "data")
    with open(data / "captions.txt", "a", encoding="utf-8") as f:
        f.write("x.jpg," + "a" * 200_000 + "\n")  # larger than csv's field limit: csv.Error
    info = inspect_dataset(data)
    assert not info.ok and "the train split cannot be read: field larger than field limit" in info.problems[0]


def test_an_annotation_file_nested_too_deeply_is_a_problem_of_the_check(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images" / "train2017").mkdir(parents=True)
    (tmp_path / "annotations" / "captions_train2017.json").write_text("[" * 200_000 + "]" * 200_000)
    info = inspect_dataset(tmp_path, splits=("train",))
    assert not info.ok and "nested too deeply" in info.problems[0]


def test_a_dataset_of_damaged_images_only_stops_in_plain_words(tmp_path):
    from core.runs import folder as runs
    from core.train.trainer import run

    data = make_flickr(tmp_path / "data")
    for image in (data / "images").iterdir():
        image.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="none of the .* images of the train split could be read"):
        run(tiny_train_config(data, tmp_path, epochs=1), tmp_path / "run")
    error = [e for e in runs.read_progress(tmp_path / "run") if e["event"] == "error"][-1]
    assert "could be read as an image" in error["message"] and "max()" not in error["message"]


def test_resuming_after_config_json_was_edited_names_the_mismatch(tmp_path):
    import torch

    from core.train.checkpoint import CheckpointMismatch, load_checkpoint, save_checkpoint
    from core.base.config import ModelConfig
    from core.nn.model import CaptionModel

    def model(hidden):
        cfg = ModelConfig(vocab_size=12, decoder="attention", embed_dim=16, hidden_dim=hidden, attention_dim=8)
        return CaptionModel(cfg, with_encoder=False, pretrained=False)

    saved = model(24)
    optimizer = torch.optim.AdamW(saved.parameters())
    save_checkpoint(tmp_path / "c.safetensors", saved, optimizer, {"epoch": 0})
    edited = model(32)
    with pytest.raises(CheckpointMismatch) as e:
        load_checkpoint(tmp_path / "c.safetensors", edited, torch.optim.AdamW(edited.parameters()))
    message = str(e.value)
    assert "does not fit the model that config.json now describes" in message and "there," in message
    assert "Error(s) in loading state_dict" not in message and "\n" not in message
    assert isinstance(e.value, ValueError)  # what the trainer reports as an error event
    json.dumps(message)


def test_the_train_form_refuses_out_of_range_values_instead_of_using_defaults(tmp_path, monkeypatch):
    """Hidden size 5000 (the form allows up to 4096) and 0 epochs: the page says so and starts nothing (before: the
    widget kept its previous value, so the run started with the defaults the person had changed)."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from core.base.form_ranges import out_of_range

    root = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("CAPTION_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("CAPTION_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("CAPTION_WORKER", "0")
    from ui import warm

    # the device report the server's warm-up makes, fixed: the form draws the same whatever tests ran before
    report = {"device": "cpu", "name": "CPU", "torch": "2.14.1", "gpus": 0}
    monkeypatch.setattr(warm, "device_info", lambda: dict(report))
    data = make_flickr(tmp_path / "data")
    at = AppTest.from_file(str(root / "app.py"), default_timeout=120).switch_page("pages/2_Train.py").run()
    at.text_input[0].set_value(str(data))
    assert not at.exception, at.exception
    fields = {n.label: n for n in at.number_input}
    fields["Hidden size"].set_value(5000)
    fields["Epochs"].set_value(0)
    at.button[0].click().run()
    assert not at.exception
    shown = " ".join(e.value for e in at.error)
    assert "Hidden size must be from 8 to 4096 (it is 5000)" in shown and "Epochs must be from 1 to 200 (it is 0)" in shown
    from core.runs.folder import FORM_MEMORY, list_runs

    assert list_runs(tmp_path / "runs") == []  # no run started (the form's memory may be there: it is no run)
    assert {p.name for p in (tmp_path / "runs").glob("*")} <= {FORM_MEMORY}
    assert out_of_range({"hidden_dim": 512, "lr": 1e-3, "dropout": 0.5}) == []
    assert out_of_range({"lr": float("nan")}) == ["Learning rate must be a number from 1e-06 to 1 (it is nan)."]
