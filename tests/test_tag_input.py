"""A decoder that reads the backbone classifier's tags (ModelConfig.tag_slots): the tag row, the "no photo" vector,
the nouns' word ids, bundles with and without tags (core.nn.model, core.nn.weights)."""
import json

import pytest
import torch

from core.base.config import ModelConfig
from core.data.object_words import object_words
from core.data.vocabulary import UNK, Vocabulary
from core.nn.decode import beam_search
from core.nn.model import COPY_SCALE, NO_PHOTO, CaptionModel, tag_vocabulary, with_tag_row
from core.nn.weights import load_bundle, save_bundle

N = len(object_words().nouns)


def tagged_model(decoder: str, vocab: Vocabulary, slots: int = 3) -> CaptionModel:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(vocab), decoder=decoder, embed_dim=16, hidden_dim=24, attention_dim=8,
                      num_heads=4, num_layers=1, dropout=0.0, max_len=8, tag_slots=slots)
    model = CaptionModel(cfg, with_encoder=False, pretrained=False).eval()
    model.set_tag_vocabulary(vocab.stoi)
    return model


def probs_of(**nouns) -> torch.Tensor:
    """(1, N) noun probabilities with the given nouns (cat=0.9, ...)."""
    out = torch.zeros(1, N)
    for noun, p in nouns.items():
        out[0, object_words().nouns.index(noun.replace("_", " "))] = p
    return out


VOCAB = Vocabulary.build(["a cat on a bed", "a dog in a park", "a hot dog on a plate", "two zebras"], min_count=1)


def test_the_tag_row_holds_the_noun_probabilities_and_the_no_photo_flag():
    grid = torch.randn(2, 64, 1280)
    feats = with_tag_row(grid, torch.cat([probs_of(cat=0.9), probs_of(dog=0.5)]), torch.tensor([True, False]))
    assert feats.shape == (2, 65, 1280) and torch.equal(feats[:, :64], grid)
    assert feats[0, 64, object_words().nouns.index("cat")] == pytest.approx(0.9)
    assert feats[:, 64, NO_PHOTO].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="do not fit"):
        with_tag_row(torch.randn(1, 4, 100), probs_of(cat=1.0))  # a backbone narrower than the noun list


def test_each_noun_starts_from_its_word_in_the_vocabulary():
    ids = tag_vocabulary(VOCAB.stoi)
    nouns = object_words().nouns
    assert len(ids) == N
    assert ids[nouns.index("cat")] == VOCAB.stoi["cat"] and ids[nouns.index("zebra")] == UNK  # "zebras" only
    assert ids[nouns.index("hot dog")] == VOCAB.stoi["dog"]  # a noun of several words: its last word
    model = tagged_model("transformer", VOCAB)
    assert model.decoder.tags.noun_vocab[nouns.index("cat")] == VOCAB.stoi["cat"]


@pytest.mark.parametrize("decoder", ["attention", "transformer"])
def test_the_tags_change_the_caption_model_and_decoding_reads_them(decoder):
    model = tagged_model(decoder, VOCAB)
    grid, caps = torch.randn(1, 64, 1280), torch.tensor([[1, 4, 5, 6, 2]])
    with torch.no_grad():
        cat, _ = model(with_tag_row(grid, probs_of(cat=0.95)), caps)
        dog, _ = model(with_tag_row(grid, probs_of(dog=0.95)), caps)
        unsure, _ = model(with_tag_row(grid, probs_of(cat=0.2)), caps)
    assert not torch.allclose(cat, dog) and not torch.allclose(cat, unsure)  # which noun, and how likely
    feats = with_tag_row(grid.repeat(2, 1, 1), torch.cat([probs_of(cat=0.95), probs_of(dog=0.95)]))
    hyps = beam_search(model.decoder, feats, beam_size=2, max_len=5)
    assert len(hyps) == 2 and all(h[0].alphas is None or h[0].alphas.shape[1] == 64 for h in hyps)  # map: the grid


@pytest.mark.parametrize("decoder", ["attention", "transformer"])
def test_without_a_photo_the_grid_is_not_read(decoder):
    """Text-only captions: the grid rows are placeholders, replaced by the learned "no photo" vector."""
    model = tagged_model(decoder, VOCAB)
    caps = torch.tensor([[1, 4, 5, 6, 2]])
    probs, photo = probs_of(cat=0.9), torch.tensor([False])
    with torch.no_grad():
        a, _ = model(with_tag_row(torch.randn(1, 64, 1280), probs, photo), caps)
        b, _ = model(with_tag_row(torch.zeros(1, 64, 1280), probs, photo), caps)
        c, _ = model(with_tag_row(torch.randn(1, 64, 1280), probs), caps)  # the same, with a photo
    assert torch.allclose(a, b) and not torch.allclose(a, c)


def test_show_and_tell_cannot_read_tags():
    with pytest.raises(ValueError, match="tag slots need a decoder that reads the grid"):
        ModelConfig(vocab_size=10, decoder="show_tell", tag_slots=3)


def test_a_bundle_with_tags_round_trips_and_an_old_bundle_is_unchanged(tmp_path):
    model = tagged_model("transformer", VOCAB)
    save_bundle(tmp_path / "tagged", model, VOCAB)
    loaded = load_bundle(tmp_path / "tagged", pretrained=False)
    assert loaded.model.cfg.tag_slots == 3
    assert torch.equal(loaded.model.decoder.tags.noun_vocab, model.decoder.tags.noun_vocab)  # saved, not rebuilt
    feats = with_tag_row(torch.randn(1, 64, 1280), probs_of(cat=0.9))
    with torch.no_grad():
        assert torch.allclose(loaded.model(feats, torch.tensor([[1, 4, 5, 2]]))[0],
                              model(feats, torch.tensor([[1, 4, 5, 2]]))[0], atol=1e-3)  # fp16 weights allowed
    # a bundle made before tag slots: no tag_slots key in config.json, no tag weights; it loads as it always did
    old = CaptionModel(ModelConfig(vocab_size=len(VOCAB), decoder="transformer", embed_dim=16, hidden_dim=24,
                                   num_heads=4, num_layers=1, max_len=8), with_encoder=False, pretrained=False)
    save_bundle(tmp_path / "old", old, VOCAB)
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config.pop("tag_slots")
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    loaded = load_bundle(tmp_path / "old", pretrained=False)
    assert loaded.model.cfg.tag_slots == 0 and loaded.model.decoder.tags is None
    assert not any("tags" in k for k in loaded.model.state_dict())


def _copy_on(model: CaptionModel, size: float) -> None:
    """Give the copy path a fixed size (every tag raises its words by size x gate) and a gate of 1."""
    tags = model.decoder.tags
    with torch.no_grad():
        tags.copy_size[2].bias.fill_(size / COPY_SCALE)
        tags.copy_gate.weight.zero_()
        tags.copy_gate.bias.fill_(30.0)  # sigmoid(30) = 1


@pytest.mark.parametrize("decoder", ["attention", "transformer"])
def test_the_copy_path_raises_the_tags_singular_and_plural_and_nothing_else(decoder):
    vocab = Vocabulary.build(["a cat on a bed", "two cats", "a dog in a park"], min_count=1)
    model = tagged_model(decoder, vocab)
    nouns = object_words().nouns
    assert model.decoder.tags.copy_vocab[nouns.index("cat")].tolist() == [vocab.stoi["cat"], vocab.stoi["cats"]]
    assert model.decoder.tags.copy_vocab[nouns.index("zebra")].tolist() == [UNK, UNK]  # never raised
    feats = with_tag_row(torch.randn(1, 64, 1280), probs_of(cat=0.9, zebra=0.5))
    caps = torch.tensor([[1, 4, 5, 2]])
    with torch.no_grad():
        before, _ = model(feats, caps)  # a new model: the copy path starts with no effect
        _copy_on(model, 4.0)
        after, _ = model(feats, caps)
    raised = (after - before).abs() > 1e-4  # (1, T, V)
    assert raised[0, :, vocab.stoi["cat"]].all() and raised[0, :, vocab.stoi["cats"]].all()
    assert raised.sum() == 2 * caps.size(1) - 2  # those two words at every position, nothing else (not <unk>)
    assert torch.allclose((after - before)[0, :, vocab.stoi["cat"]], torch.full((3,), 4.0), atol=1e-3)


@pytest.mark.parametrize("decoder", ["attention", "transformer"])
@pytest.mark.parametrize("copy", [0.0, 2.5])  # a new model's copy path (no effect yet), and one that raises words
def test_step_by_step_decoding_matches_teacher_forcing_with_tags(decoder, copy):
    model = tagged_model(decoder, VOCAB)
    if copy:
        _copy_on(model, copy)
    feats = with_tag_row(torch.randn(2, 64, 1280), torch.cat([probs_of(cat=0.9), probs_of(dog=0.4)]))
    caps = torch.tensor([[1, 4, 5, 6, 2], [1, 7, 8, 2, 0]])
    with torch.no_grad():
        logits, _ = model(feats, caps)
        state = model.decoder.init_state(feats)
        for t in range(4):
            step, state, _ = model.decoder.step(caps[:, t], state)
            real = caps[:, t + 1] != 0
            assert torch.allclose(step[real], logits[real, t], atol=1e-4), t


@pytest.mark.parametrize("decoder", ["attention", "transformer"])
def test_a_decoder_learns_to_say_the_tagged_noun_without_a_photo(decoder):
    """Text-only captions "a cat" / "a dog" whose only clue is the tag: a few dozen steps teach the copy path,
    and greedy decoding then names what the tag says."""
    vocab = Vocabulary.build(["a cat", "a dog"], min_count=1)
    model = tagged_model(decoder, vocab).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    photo = torch.zeros(8, dtype=torch.bool)
    probs = torch.cat([probs_of(cat=0.8)] * 4 + [probs_of(dog=0.8)] * 4)  # (8, N)
    caps = torch.tensor([vocab.encode("a cat", 4)] * 4 + [vocab.encode("a dog", 4)] * 4)
    feats = with_tag_row(torch.zeros(8, 64, 1280), probs, photo)
    for _ in range(60):
        logits, _ = model(feats, caps)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), caps[:, 1:], ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = with_tag_row(torch.zeros(2, 64, 1280), torch.cat([probs_of(dog=0.7), probs_of(cat=0.7)]),
                        torch.zeros(2, dtype=torch.bool))
    hyps = beam_search(model.decoder, test, beam_size=2, max_len=4)
    assert [vocab.decode(h[0].tokens) for h in hyps] == ["a dog", "a cat"]
