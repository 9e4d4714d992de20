"""Caption text without photos (core.data.text_only): the loader, the excluded photos, the nouns, the tag noise."""
import json

import numpy as np
import pytest

from core.data.object_words import object_words
from core.data.text_only import TagNoise, TextDataError, caption_nouns, captions_text
from core.data.vocabulary import fast_tokenize

NOUNS = object_words().nouns


def coco_file(path, images_exist=False):
    """A COCO-layout caption file whose photos are absent (as COCO val2017's captions are here)."""
    data = {"images": [{"id": 285, "file_name": "000000000285.jpg"}, {"id": 632, "file_name": "000000000632.jpg"},
                       {"id": 724, "file_name": "000000000724.jpg"}],
            "annotations": [{"image_id": 285, "id": 1, "caption": "A big brown bear walking in the grass."},
                            {"image_id": 285, "id": 2, "caption": "A bear in a field."},
                            {"image_id": 632, "id": 3, "caption": "A bedroom with a bed and a window. "},
                            {"image_id": 724, "id": 4, "caption": "A stop sign on a street corner."},
                            {"image_id": 724, "id": 5, "caption": "   "}]}
    path.write_text(json.dumps(data))
    return path


def test_a_coco_caption_file_is_read_without_its_photos(tmp_path):
    captions = captions_text(coco_file(tmp_path / "captions_val2017.json"))
    assert captions == ["A big brown bear walking in the grass.", "A bear in a field.",
                        "A bedroom with a bed and a window.", "A stop sign on a street corner."]  # blank left out


def test_the_photos_a_model_is_checked_on_are_left_out(tmp_path):
    path = coco_file(tmp_path / "c.json")
    by_name = captions_text(path, exclude={"000000000285.jpg", "000000000724.jpg"})
    assert by_name == ["A bedroom with a bed and a window."]
    assert captions_text(path, exclude={"632"}) == captions_text(path)[:2] + captions_text(path)[3:]  # by COCO id
    # a caption file that lists no images: the id alone names the photo (COCO 2017's file names)
    data = json.loads(path.read_text())
    data.pop("images")
    path.write_text(json.dumps(data))
    assert "A bear in a field." not in captions_text(path, exclude={"000000000285.jpg"})


def test_a_plain_list_of_captions_and_bad_files(tmp_path):
    (tmp_path / "list.txt").write_text("a cat on a sofa\n\n  a dog on a beach  \n", encoding="utf-8")
    assert captions_text(tmp_path / "list.txt") == ["a cat on a sofa", "a dog on a beach"]
    with pytest.raises(TextDataError, match="is not a file"):
        captions_text(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(TextDataError, match="not a COCO caption file"):
        captions_text(tmp_path / "bad.json")


def test_the_nouns_of_a_caption_through_the_plain_noun_mapping():
    nouns = [NOUNS[i] for i in caption_nouns(fast_tokenize("A kitten sleeping next to a laptop and two cats."))]
    assert nouns == ["cat", "laptop"]  # the subject first, each noun once
    assert caption_nouns(fast_tokenize("a man is running")) == []  # ImageNet has no person class


def test_the_noise_looks_like_the_classifier(tmp_path):
    """Over many draws: the subject is found about as often as measured, with about the measured probabilities,
    at most `slots` nouns have a probability, and they never sum past 1."""
    noise = TagNoise.load()
    rng = np.random.default_rng(0)
    bear, grass = NOUNS.index("bear"), NOUNS.index("lawn") if "lawn" in NOUNS else NOUNS.index("dog")
    draws = np.stack([noise.noun_probs([bear, grass], rng) for _ in range(3000)])  # (3000, N)
    assert ((draws > 0).sum(1) <= noise.slots).all() and (draws.sum(1) <= 1.0 + 1e-6).all()
    found = draws[:, bear] > 0
    assert abs(found.mean() - noise.subject_rate) < 0.04
    assert abs(np.median(draws[found, bear]) - np.median(noise.subject_probs)) < 0.08
    wrong = np.delete(draws, [bear, grass], axis=1)
    assert (wrong > 0).sum(1).mean() > 1.0  # the other top tags: wrong nouns, as the classifier's often are
    assert np.median(wrong[wrong > 0]) < 0.2
