"""Ensembles of decoders (core.nn.ensemble, core.bundle.join): the search drives N decoders as one, and a bundle holds them safely."""
import json

import pytest
import torch

from core.bundle.store import BundleError
from core.nn.weights import load_bundle, save_bundle
from core.base.config import ModelConfig
from core.nn.decode import beam_search, greedy_decode
from core.nn.ensemble import EnsembleDecoder
from core.bundle.join import combine_bundles, main
from core.nn.model import CaptionModel
from core.data.vocabulary import Vocabulary

WORDS = ["a b c d e f g h"]


def _model(seed, decoder="attention", vocab_size=12):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, backbone="efficientnet_lite0", decoder=decoder, embed_dim=16,
                      hidden_dim=24, attention_dim=8, feature_proj_dim=16, dropout=0.0, max_len=8)
    return CaptionModel(cfg, with_encoder=False, pretrained=False).eval()


def _bundle(folder, seed, words=WORDS, half=False):
    vocab = Vocabulary.build(words, min_count=1)
    return save_bundle(folder, _model(seed, vocab_size=len(vocab)), vocab, metrics={}, half=half)


@pytest.mark.parametrize("decoder", ["attention", "show_tell"])
def test_two_copies_of_one_decoder_decode_as_that_decoder(decoder):
    one = _model(0, decoder).decoder
    both = EnsembleDecoder([one, one])
    feats = torch.randn(3, 49, 1280)  # (B, P, C)
    solo, pair = beam_search(one, feats, beam_size=3, max_len=8), beam_search(both, feats, beam_size=3, max_len=8)
    assert [[h.tokens for h in hs] for hs in solo] == [[h.tokens for h in hs] for hs in pair]
    assert all(abs(a.logprob - b.logprob) < 1e-4 for x, y in zip(solo, pair) for a, b in zip(x, y))
    assert torch.equal(greedy_decode(one, feats, 8)[0], greedy_decode(both, feats, 8)[0])


@pytest.mark.parametrize("combine", ["logprob", "prob"])
def test_a_step_averages_the_members_distributions(combine):
    a, b = _model(1).decoder, _model(2).decoder
    ens = EnsembleDecoder([a, b], combine=combine)
    feats, words = torch.randn(2, 49, 1280), torch.tensor([4, 5])
    state = ens.init_state(feats)
    assert {k.split(".", 1)[0] for k in state} == {"0", "1"}
    with torch.no_grad():
        out, new, alpha = ens.step(words, state)
        la, sa, aa = a.step(words, a.init_state(feats))
        lb, sb, ab = b.step(words, b.init_state(feats))
    pa, pb = la.log_softmax(-1), lb.log_softmax(-1)
    expected = (pa + pb) / 2 if combine == "logprob" else ((pa.exp() + pb.exp()) / 2).log()
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(new["1.h"], sb["h"]) and torch.allclose(alpha, (aa + ab) / 2)
    assert new["0.feats"] is state["0.feats"]  # passed through untouched: beam search need not reorder it


def test_an_ensembles_beams_end_and_its_step_renormalises():
    a, b = _model(1).decoder, _model(2).decoder
    feats = torch.randn(4, 49, 1280)
    hyps = beam_search(EnsembleDecoder([a, b]), feats, beam_size=2, max_len=6)
    assert all(h and 1 <= len(h[0].tokens) <= 6 for h in hyps)
    with torch.no_grad():
        s = EnsembleDecoder([a, b]).init_state(feats)
        out = EnsembleDecoder([a, b]).step(torch.full((4,), 1), s)[0]
    assert torch.allclose(out.exp().sum(-1), torch.ones(4), atol=0.3)  # a product of experts: close to normalised
    assert torch.allclose(out.log_softmax(-1).exp().sum(-1), torch.ones(4), atol=1e-5)


def test_combine_bundles_round_trip(tmp_path):
    members = [_bundle(tmp_path / f"m{i}", seed=i, half=True) for i in range(3)]
    assert main(["--out", str(tmp_path / "ens"), *map(str, members)]) == 0
    ens = load_bundle(tmp_path / "ens", pretrained=False)
    cfg = json.loads((tmp_path / "ens" / "config.json").read_text())
    assert cfg["ensemble"] == 3 and ens.config.ensemble == 3
    assert isinstance(ens.model.decoder, EnsembleDecoder) and len(ens.model.decoder.members) == 3
    assert "ensemble of 3 attention decoders" in (tmp_path / "ens" / "card.md").read_text()
    # each member is its bundle's decoder, weight for weight (fp16 kept on disk: the members were fp16)
    for i, m in enumerate(members):
        solo = load_bundle(m, pretrained=False).model.decoder.state_dict()
        got = ens.model.decoder.members[i].state_dict()
        assert all(torch.equal(solo[k], got[k]) for k in solo)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ens" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


def test_combine_refuses_members_that_do_not_fit(tmp_path, capsys):
    a = _bundle(tmp_path / "a", seed=0)
    other_words = _bundle(tmp_path / "b", seed=1, words=["a b c d e f g i"])  # same size, one word differs
    with pytest.raises(BundleError, match="another vocabulary"):
        combine_bundles([a, other_words], tmp_path / "x")
    with pytest.raises(BundleError, match="at least two"):
        combine_bundles([a], tmp_path / "x")
    assert main(["--out", str(tmp_path / "x"), str(a), str(tmp_path / "missing")]) == 2
    assert "no model folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_hostile_ensemble_count_is_refused_before_building(tmp_path):
    a = _bundle(tmp_path / "a", seed=0)
    cfg = json.loads((a / "config.json").read_text())
    (a / "config.json").write_text(json.dumps({**cfg, "ensemble": 10_000}))
    with pytest.raises(BundleError, match="ensemble is 10000"):
        load_bundle(a, pretrained=False)
    (a / "config.json").write_text(json.dumps({**cfg, "ensemble": 2}))  # says 2 decoders, holds one
    with pytest.raises(BundleError, match="does not fit config.json"):
        load_bundle(a, pretrained=False)


def test_training_does_not_start_from_an_ensemble(tmp_path):
    from core.base.config import TrainConfig
    from core.train.trainer import with_init_architecture

    members = [_bundle(tmp_path / f"m{i}", seed=i) for i in range(2)]
    combine_bundles(members, tmp_path / "ens")
    with pytest.raises(BundleError, match="ensemble of 2 decoders"):
        with_init_architecture(TrainConfig(init_from=str(tmp_path / "ens")))
