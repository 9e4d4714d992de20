"""Training a tag-reading decoder with caption text that has no photos (TrainConfig.tag_slots, text_data)."""
import json

import numpy as np
import torch

from conftest import make_flickr, tiny_train_config
from core.data.object_words import object_words
from core.data.vocabulary import PAD, Vocabulary
from core.nn.captioner import Captioner
from core.nn.model import NO_PHOTO
from core.nn.weights import load_bundle
from core.train.trainer import TextSamples, run


def text_file(path):
    """COCO-layout captions whose photos are absent; the photo 000000000007.jpg is the one a model is checked on."""
    anns = [("000000000001.jpg", "a banana on a plate"), ("000000000002.jpg", "a red banana on a plate"),
            ("000000000003.jpg", "a zebra in a field"), ("000000000007.jpg", "a secretword giraffe")]
    path.write_text(json.dumps({"images": [{"id": i, "file_name": n} for i, (n, _) in enumerate(anns)],
                                "annotations": [{"image_id": i, "id": i, "caption": c}
                                                for i, (_, c) in enumerate(anns)]}))
    return path


def test_a_tag_reading_model_learns_from_photos_and_from_text_without_photos(tmp_path):
    data = make_flickr(tmp_path / "flickr", per_class=1)
    checked = tmp_path / "checked"  # the folder of photos the model will be checked on
    checked.mkdir()
    (checked / "000000000007.jpg").write_bytes(b"")
    cfg = tiny_train_config(data, tmp_path, decoder="transformer", num_layers=1, num_heads=4, epochs=3,
                            tag_slots=2, text_data=str(text_file(tmp_path / "captions.json")), text_share=0.5,
                            text_exclude=str(checked))
    bundle = run(cfg, tmp_path / "run")
    loaded = load_bundle(bundle, pretrained=False)
    vocab = loaded.vocab
    assert loaded.model.cfg.tag_slots == 2
    assert "banana" in vocab.stoi and "zebra" in vocab.stoi  # the text's words, which no photo caption has
    assert "secretword" not in vocab.stoi  # the checked photo's caption was left out
    nouns = object_words().nouns
    assert loaded.model.decoder.tags.noun_vocab[nouns.index("banana")] == vocab.stoi["banana"]
    events = [json.loads(x) for x in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    assert any("3 captions of text without photos" in e.get("message", "") for e in events)
    result = Captioner(bundle, device="cpu").caption([("red.png", data / "images" / "red_square_0.png")])[0]
    assert result.error is None and result.caption  # the app's captioner feeds it the tag row


def test_each_step_adds_text_captions_without_a_photo_and_the_same_ones_on_a_resume():
    vocab = Vocabulary.build(["a banana on a plate", "a zebra in a field", "a red square"], min_count=1)
    tokens = np.full((2, 7), PAD, dtype=np.int32)
    for k, text in enumerate(["a banana on a plate", "a zebra in a field"]):
        ids = [1, *vocab.encode(text)[1:-1], 2]
        tokens[k, :len(ids)] = ids
    nouns = object_words().nouns
    text = TextSamples(tokens, [[nouns.index("banana")], [nouns.index("zebra")]], share=0.5)
    feats, caps = torch.randn(2, 5, 1280), torch.tensor([[1, 4, 5, 2], [1, 4, 6, 2]])
    index = torch.tensor([0, 1])
    f, c, i = text.add_to(feats, caps, index, seed=[0, 0, 7])
    assert f.shape == (4, 5, 1280) and c.shape[0] == 4 and i.tolist() == [0, 1, 2, 3]
    assert torch.equal(f[:2], feats) and (f[2:, :-1] == 0).all() and (f[2:, -1, NO_PHOTO] == 1).all()
    assert (c[2:] != PAD).sum(1).min() >= 5  # the text captions, whole
    again = text.add_to(feats, caps, index, seed=[0, 0, 7])
    assert torch.equal(again[0], f) and torch.equal(again[1], c)  # the step's own draw
    f, c, i = text.add_to(feats[:2], caps, None, seed=[0, 0, 8])  # captions one by one: rows stay 1:1
    assert i is None and f.size(0) == c.size(0) == 4
