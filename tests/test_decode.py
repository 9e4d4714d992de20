import pytest
import torch

from beam_reference import reference_beam_search
from core.nn.decode import _ban_repeated_ngrams, beam_search, greedy_decode, sample_captions
from core.data.vocabulary import END, PAD
from test_model import tiny_model


@pytest.mark.parametrize("decoder", ["show_tell", "attention", "transformer"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_width_one_equals_greedy(decoder, seed):
    m = tiny_model(decoder, vocab_size=8)
    torch.manual_seed(seed)
    feats = torch.randn(4, 49, 1280) * 3
    greedy, _ = greedy_decode(m.decoder, feats, max_len=6)
    beams = beam_search(m.decoder, feats, beam_size=1, max_len=6, no_repeat_ngram=0)
    for row, hyps in zip(greedy.tolist(), beams):
        words = [t for t in row if t not in (END, PAD)]
        assert hyps[0].tokens == words


def test_beam_search_when_no_beam_reaches_end():
    """sgrvinod's beam search crashes here (issue #142): a model that never says <end>."""
    m = tiny_model("attention", vocab_size=10)
    with torch.no_grad():
        m.decoder.fc.bias[END] = -1e9
    hyps = beam_search(m.decoder, torch.randn(2, 49, 1280), beam_size=3, max_len=5)
    assert [len(h) for h in hyps] == [3, 3]
    for image_hyps in hyps:
        assert all(not h.finished and len(h.tokens) == 5 for h in image_hyps)
        assert image_hyps[0].alphas.shape == (5, 49)
        assert image_hyps[0].score >= image_hyps[-1].score


def test_beam_search_is_batch_independent_and_deterministic():
    m = tiny_model("show_tell", vocab_size=9)
    feats = torch.randn(3, 1, 1280) * 3
    together = beam_search(m.decoder, feats, beam_size=4, max_len=7)
    alone = [beam_search(m.decoder, feats[i:i + 1], beam_size=4, max_len=7)[0] for i in range(3)]
    assert [[h.tokens for h in hs] for hs in together] == [[h.tokens for h in hs] for hs in alone]
    again = beam_search(m.decoder, feats, beam_size=4, max_len=7)
    assert [[h.score for h in hs] for hs in together] == [[h.score for h in hs] for hs in again]


def test_no_repeat_ngram():
    logp = torch.zeros(3, 9)
    _ban_repeated_ngrams(logp, torch.tensor([[5, 6, 7, 5, 6], [5, 6, 8, 5, 6], [1, 2, 3, 4, 5]]), 3)
    assert (logp == float("-inf")).nonzero().tolist() == [[0, 7], [1, 8]]
    logp = torch.zeros(2, 9)
    _ban_repeated_ngrams(logp, torch.tensor([[5, 6], [6, 6]]), 3)  # no trigram yet
    assert (logp == 0).all()
    _ban_repeated_ngrams(logp, torch.tensor([[5, 6], [6, 6]]), 2)  # "6 6" would repeat
    assert (logp == float("-inf")).nonzero().tolist() == [[1, 6]]
    m = tiny_model("show_tell", vocab_size=6)
    for hs in beam_search(m.decoder, torch.randn(3, 1, 1280) * 3, beam_size=3, max_len=12, no_repeat_ngram=2):
        for h in hs:
            bigrams = list(zip(h.tokens, h.tokens[1:]))
            assert len(bigrams) == len(set(bigrams))


def test_the_default_beam_search_never_repeats_a_word_pair():
    """The app's decoding (no n-gram option given) cannot write "a man is riding a bike on a bike"."""
    torch.manual_seed(0)
    m = tiny_model("show_tell", vocab_size=6)  # 2 words: long captions must repeat pairs unless banned
    for hs in beam_search(m.decoder, torch.randn(4, 1, 1280) * 3, beam_size=3, max_len=12, min_len=4):
        for h in hs:
            bigrams = list(zip(h.tokens, h.tokens[1:]))
            assert len(bigrams) == len(set(bigrams)), h.tokens


def test_beam_hypotheses_are_ranked_by_length_normalised_score():
    m = tiny_model("show_tell", vocab_size=9)
    for hs in beam_search(m.decoder, torch.randn(2, 1, 1280) * 3, beam_size=3, max_len=8, length_penalty=0.7):
        scores = [h.score for h in hs]
        assert scores == sorted(scores, reverse=True)
        for h in hs:
            assert h.score == pytest.approx(h.logprob / (len(h.tokens) + 1) ** 0.7) or not h.finished


def test_sampling_masks_after_end_and_keeps_gradients():
    m = tiny_model("attention", vocab_size=8).train()
    tokens, logps, mask = sample_captions(m.decoder, torch.randn(5, 49, 1280), max_len=6)
    assert tokens.shape == logps.shape == mask.shape
    assert torch.isfinite(logps).all() and logps.requires_grad
    for row, mrow in zip(tokens.tolist(), mask.tolist()):
        if END in row:
            e = row.index(END)
            assert all(t == PAD for t in row[e + 1:]) and not any(mrow[e + 1:])


def test_a_caption_has_at_least_one_word():
    """Regression: a barely trained model put <end> first and the app showed an empty caption."""
    m = tiny_model("show_tell", vocab_size=8)
    with torch.no_grad():
        m.decoder.fc.bias[END] = 1e3  # <end> is by far the likeliest word everywhere
    feats = torch.randn(2, 1, 1280)
    greedy, _ = greedy_decode(m.decoder, feats, max_len=5)
    assert greedy[:, 0].ne(END).all() and greedy[:, 1].eq(END).all()
    for hyps in beam_search(m.decoder, feats, beam_size=2, max_len=5):
        assert all(len(h.tokens) == 1 and h.finished for h in hyps)
    tokens, _, _ = sample_captions(m.decoder, feats, max_len=5)
    assert tokens[:, 0].ne(END).all()


@pytest.mark.parametrize("decoder", ["show_tell", "attention", "transformer"])
def test_constrained_beam_search_names_the_forced_word_and_still_ends(decoder):
    """Anderson et al. 2017: the caption must contain one word of each set, and still end with <end>."""
    m = tiny_model(decoder, vocab_size=12)
    torch.manual_seed(0)
    with torch.no_grad():
        m.decoder.fc.bias[END] += 2.5  # a model that ends its sentences, as a trained one does
    feats = torch.randn(3, 1 if decoder == "show_tell" else 49, 1280) * 3
    plain = beam_search(m.decoder, feats, beam_size=3, max_len=10)
    assert all(h.finished for hs in plain for h in hs)
    unused = [next(w for w in range(4, 12) if all(w not in h.tokens for h in hs)) for hs in plain]
    forced = beam_search(m.decoder, feats, beam_size=3, max_len=10, constraints=[[[w]] for w in unused])
    for w, hyps in zip(unused, forced):
        assert len(hyps) == 3
        for h in hyps:
            assert w in h.tokens and h.finished
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


def test_constrained_beam_search_with_two_sets_and_alternatives():
    m = tiny_model("attention", vocab_size=12)
    feats = torch.randn(2, 49, 1280) * 3
    sets = [[5, 6], [9]]  # "cat" or "cats", and "bed"
    for hyps in beam_search(m.decoder, feats, beam_size=2, max_len=12, constraints=[sets, sets]):
        for h in hyps:
            assert (5 in h.tokens or 6 in h.tokens) and 9 in h.tokens
            assert h.alphas.shape == (len(h.tokens), 49)


def test_constraints_leave_unconstrained_images_alone():
    m = tiny_model("show_tell", vocab_size=10)
    feats = torch.randn(3, 1, 1280) * 3
    plain = beam_search(m.decoder, feats, beam_size=3, max_len=8)
    mixed = beam_search(m.decoder, feats, beam_size=3, max_len=8, constraints=[[], [[7]], []])
    for i in (0, 2):
        assert [h.tokens for h in mixed[i]] == [h.tokens for h in plain[i]]
        assert [h.score for h in mixed[i]] == pytest.approx([h.score for h in plain[i]])
    assert all(7 in h.tokens for h in mixed[1])



@pytest.mark.parametrize("decoder", ["show_tell", "attention", "transformer"])
def test_images_finishing_early_or_with_other_constraints_do_not_change_the_others(decoder):
    """Beam search drops finished images from the batch and searches images with fewer word sets apart:
    every image's hypotheses (words, scores, attention) are those it gets alone."""
    m = tiny_model(decoder, vocab_size=12)
    torch.manual_seed(3)
    with torch.no_grad():
        m.decoder.fc.bias[END] += 1.5
    feats = torch.randn(5, 1 if decoder == "show_tell" else 49, 1280) * 3
    constraints = [[], [[7]], [], [[5, 6], [9]], [[8]]]
    together = beam_search(m.decoder, feats, beam_size=3, max_len=10, constraints=constraints)
    lengths = {len(hs[0].tokens) for hs in together}
    assert len(lengths) > 1  # the images really finish at different steps
    for i in range(5):
        alone = beam_search(m.decoder, feats[i:i + 1], beam_size=3, max_len=10,
                            constraints=[constraints[i]] if constraints[i] else None)[0]
        assert [h.tokens for h in together[i]] == [h.tokens for h in alone]
        assert [h.score for h in together[i]] == pytest.approx([h.score for h in alone], abs=1e-5)
        if decoder != "show_tell":
            for a, b in zip(together[i], alone):
                assert torch.allclose(a.alphas, b.alphas, atol=1e-5)


def test_bf16_decoding_keeps_fp32_logits_and_attention():
    """core.nn.captioner decodes attention models under CPU bf16 autocast; the output layer stays fp32 (bf16 logits
    reorder close beams) and the attention maps come back as fp32 (numpy has no bf16)."""
    m = tiny_model("attention", vocab_size=12)
    torch.manual_seed(0)
    feats = torch.randn(3, 49, 1280) * 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state = m.decoder.init_state(feats)
        logits, _, alpha = m.decoder.step(torch.full((3,), 1), state)
        hyps = beam_search(m.decoder, feats, beam_size=2, max_len=6)
    assert logits.dtype == torch.float32 and alpha.shape == (3, 49)
    assert all(h.alphas.dtype == torch.float32 and h.alphas.shape == (len(h.tokens), 49) for hs in hyps for h in hs)
    h = hyps[0][0]
    h.alphas.numpy()  # what CaptionResult.attention does


def _same(fast, slow):
    assert len(fast) == len(slow)
    for hs, ref in zip(fast, slow):
        assert [(h.tokens, h.score, h.logprob, h.finished) for h in hs] == [
            (h.tokens, h.score, h.logprob, h.finished) for h in ref]
        for h, r in zip(hs, ref):
            assert (h.alphas is None) == (r.alphas is None)
            assert h.alphas is None or torch.equal(h.alphas, r.alphas)


@pytest.mark.parametrize("decoder", ["show_tell", "attention", "transformer"])
@pytest.mark.parametrize("seed", range(4))
def test_beam_search_equals_the_reference_one(decoder, seed):
    """Exactly the hypotheses, scores and attention of the straightforward implementation (tests/beam_reference.py):
    beam widths 1-4, tiny vocabularies (dead slots), max_len reached, no <end>, min_len, n-gram rules, images with 0, 1 or 2 word sets in one batch, under bf16 autocast too."""
    g = torch.Generator().manual_seed(seed)
    vocab = [6, 9, 12, 40][seed % 4]
    m = tiny_model(decoder, vocab_size=vocab)
    with torch.no_grad():
        m.decoder.fc.bias[END] += [2.0, 0.0, -1e9, -0.5][seed]  # early ends ... never an end
    B = 7
    feats = torch.randn(B, 1 if decoder == "show_tell" else 49, 1280, generator=g) * 3
    words = list(range(4, vocab))
    pick = lambda: [words[int(i)] for i in torch.randint(0, len(words), (2,), generator=g)]  # noqa: E731
    constraints = [[], [pick()], [pick(), pick()], [], [pick()], [[words[-1]]], []]
    for K in (1, 3) if seed % 2 else (2, 4):
        for opts in (dict(max_len=8), dict(max_len=5, min_len=3, no_repeat_ngram=2),
                     dict(max_len=9, no_repeat_ngram=0, length_penalty=1.0), dict(max_len=10, constraints=constraints),
                     dict(max_len=1), dict(max_len=9, constraints=[[pick()]] * B, no_repeat_ngram=1)):
            _same(beam_search(m.decoder, feats, beam_size=K, **opts),
                  reference_beam_search(m.decoder, feats, beam_size=K, **opts))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _same(beam_search(m.decoder, feats, beam_size=3, max_len=10, constraints=constraints),
              reference_beam_search(m.decoder, feats, beam_size=3, max_len=10, constraints=constraints))
