"""core/base/config.py: one TrainConfig with the ModelConfig inside, validated without torch."""
import pytest

from core.base.config import ConfigError, ModelConfig, TrainConfig, flag_fields, name_problem, slug
from core.base.paths import models_dir


def test_model_options_are_declared_once_and_all_settable_from_training():
    cfg = TrainConfig.from_dict({"decoder": "show_tell", "feature_proj_dim": 128, "epochs": 2})  # flat (CLI, old runs)
    assert cfg.model == ModelConfig(decoder="show_tell", feature_proj_dim=128) and cfg.epochs == 2
    again = TrainConfig.from_dict(cfg.to_dict())  # nested, as config.json holds it
    assert again == cfg and again.to_dict()["model"]["feature_proj_dim"] == 128
    names = [n for n, _, _ in flag_fields()]
    assert "feature_proj_dim" in names and len(names) == len(set(names)) and "beam_size" not in names
    assert TrainConfig.from_dict({"beam_size": 3}) == TrainConfig()  # older runs recorded it; nothing reads it


def test_bad_settings_are_named_in_plain_words():
    with pytest.raises(ConfigError, match="unknown training options: colour"):
        TrainConfig.from_dict({"colour": "red"})
    with pytest.raises(ConfigError, match="unknown decoder"):
        TrainConfig.from_dict({"decoder": "lstm2"})
    problems = TrainConfig.from_dict({"backbone": "vgg", "epochs": 0, "subset": 2.0, "model_name": "a/b"}).problems()
    assert len(problems) == 4 and any("vgg" in p for p in problems)
    assert TrainConfig().problems() == []


def test_every_decoder_has_its_names_in_words():
    from core.base.config import DECODER_NAMES, DECODER_SHORT_NAMES, DECODERS
    from ui.loader import decoder_label

    assert set(DECODER_NAMES) == set(DECODER_SHORT_NAMES) == set(DECODERS)
    assert decoder_label({"decoder": "show_tell"}) == "Show-and-Tell decoder"
    assert decoder_label({"decoder": "attention", "ensemble": 3}) == "an ensemble of 3 attention decoders"


def test_folders_are_resolved_and_default_to_the_project():
    cfg = TrainConfig().resolved()
    assert cfg.models_dir == str(models_dir()) and cfg.cache_dir.endswith("features")


def test_one_name_rule():
    assert name_problem("my_model-2") is None and name_problem("my model") and name_problem("x" * 61)
    assert slug("my model/..") == "my-model" and name_problem(slug("été ünïcode")) is None


def test_the_advanced_options_of_the_train_page_are_fields_and_checked():
    from core.base.config import ADVANCED_OPTIONS

    names = {n for n, _, _ in flag_fields()}
    assert all(name in names for name, _, _, _ in ADVANCED_OPTIONS)
    assert TrainConfig.from_dict({"decoder": "transformer", "hidden_dim": 384, "num_heads": 6}).problems() == []
    assert any("multiple" in p for p in TrainConfig.from_dict({"decoder": "transformer", "hidden_dim": 30}).problems())
    assert any("Fine-tuned stages" in p for p in TrainConfig.from_dict({"fine_tune_blocks": 2}).problems())
    assert TrainConfig.from_dict({"fine_tune": True, "fine_tune_blocks": 2, "views": 3}).problems() == []
