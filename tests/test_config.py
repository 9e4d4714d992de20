"""core/base/config.py: one TrainConfig with the ModelConfig inside, and DecodeOptions, validated without torch."""
import pytest

from core.base.config import ConfigError, DecodeOptions, ModelConfig, TrainConfig, flag_fields, name_problem, slug
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


def test_decode_options_hold_every_default_and_cross_json_whole():
    import dataclasses
    import json

    from core.base import config

    d = DecodeOptions()
    assert (d.beam, d.max_len, d.min_len, d.num_captions, d.top_p, d.object_words) == (3, 20, 1, 1, None, True)
    assert (d.no_repeat_ngram, d.length_penalty, d.tag_threshold, d.max_tags) == (2, 0.7, 0.10, 3)
    # the named constants are the dataclass's defaults, not a second copy of them
    assert (config.DEFAULT_BEAM, config.DEFAULT_MAX_LEN, config.DEFAULT_NO_REPEAT_NGRAM) == (3, 20, 2)
    assert ModelConfig().max_len == d.max_len
    chosen = DecodeOptions(beam=5, max_len=12, min_len=3, num_captions=2, top_p=0.9, object_words=False,
                           no_repeat_ngram=0, length_penalty=1.0, tag_threshold=0.5, max_tags=1)
    assert DecodeOptions.from_dict(json.loads(json.dumps(chosen.to_dict()))) == chosen  # the worker's wire
    assert DecodeOptions.from_dict({}) == d and DecodeOptions.from_dict({"beam": 1}) == DecodeOptions(beam=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.beam = 5  # shared as a default argument: it must not change under its users


def test_decode_options_refuse_what_cannot_work_in_plain_words():
    with pytest.raises(ConfigError, match="unknown decoding options: beams, colour"):
        DecodeOptions.from_dict({"beams": 5, "colour": "red"})
    with pytest.raises(ConfigError, match="JSON object"):
        DecodeOptions.from_dict([3])
    for bad, words in [({"beam": 0}, "beam width must be at least 1"), ({"max_len": 0}, "at least 1 word"),
                       ({"min_len": 30}, "at most the longest, 20"), ({"num_captions": 0}, "Captions per photo"),
                       ({"top_p": 0.0}, "above 0 and at most 1"), ({"top_p": 1.5}, "above 0 and at most 1"),
                       ({"tag_threshold": 5}, "between 0 and 1"), ({"max_tags": -1}, "cannot be negative"),
                       ({"no_repeat_ngram": -1}, "cannot be negative"), ({"length_penalty": -1}, "cannot be negative"),
                       ({"beam": "3"}, "beam must be a whole number"), ({"beam": 2.5}, "whole number"),
                       ({"object_words": "no"}, "true or false"), ({"max_tags": True}, "whole number"),
                       ({"top_p": "0.9"}, "top_p must be a number")]:
        with pytest.raises(ConfigError, match=words):
            DecodeOptions.from_dict(bad)
    with pytest.raises(ConfigError) as every:  # every problem at once, not only the first
        DecodeOptions(beam=0, max_len=5, min_len=9, top_p=2.0)
    assert all(w in str(every.value) for w in ("beam width", "shortest caption", "top-p"))


def test_beam_search_decodes_with_the_same_defaults():
    """core.nn.decode keeps its own keyword defaults (callers without a DecodeOptions): they must be these."""
    import inspect

    from core.nn.decode import beam_search

    params = inspect.signature(beam_search).parameters
    d = DecodeOptions()
    assert params["beam_size"].default == d.beam and params["max_len"].default == d.max_len
    assert params["no_repeat_ngram"].default == d.no_repeat_ngram
    assert params["length_penalty"].default == d.length_penalty and params["min_len"].default == d.min_len
