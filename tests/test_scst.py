"""Self-critical training (core.train.scst): the reward, the leave-one-out baseline, the loss, and a run that starts
from a saved model (--init-from)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from conftest import make_flickr, tiny_train_config
from core.nn.weights import load_bundle
from core.bundle.store import read_vocab
from core.train.scst import CiderReward, leave_one_out_advantage, policy_loss, scst_step
from core.train.trainer import run
from core.data.vocabulary import Vocabulary

REFS = ["a dog runs on the grass", "a brown dog runs on green grass", "the dog is running on the grass",
        "a dog running across a lawn", "a dog runs outside"]
CORPUS = [REFS, ["a man rides a bike", "a person on a bicycle"], ["two children play in the snow", "kids in snow"]]


def test_leave_one_out_baseline_is_the_mean_of_the_other_samples():
    r = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    adv = leave_one_out_advantage(r)
    assert np.allclose(adv, [[1 - 2.5, 2 - 2.0, 3 - 1.5], [0 - 1.5, 0 - 1.5, 3 - 0.0]])
    assert np.allclose(adv.sum(1), 0)  # an image's advantages balance: no sign bias from a stronger baseline
    with pytest.raises(ValueError):
        leave_one_out_advantage(np.ones((2, 1)))


def test_the_reward_sees_where_a_caption_ends():
    reward = CiderReward(CORPUS)
    ended, cut = reward(["a dog runs on the grass"] * 2, [True, False], [REFS] * 2)
    assert ended > cut  # the same words, but only one chose <end> where the references end
    # a caption cut mid-phrase scores below the finished one, although it holds all the same n-grams and more
    full, dangling = reward(["a dog runs on the grass", "a dog runs on the grass with a"], [True, True], [REFS] * 2)
    assert full > dangling
    assert reward(["a man rides a bike"], [True], [REFS])[0] < full / 3


def test_policy_loss_raises_the_probability_of_samples_better_than_their_baseline():
    logits = torch.zeros(2, 4, requires_grad=True)
    logps = logits.log_softmax(-1)[:, :1].expand(2, 3)  # (N, T): word 0 chosen at every step
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    policy_loss(torch.tensor([1.0, -1.0]), logps, mask).backward()
    assert logits.grad[0, 0] < 0 < logits.grad[1, 0]  # gradient descent: up for the good sample, down for the bad


class _BagOfWords(nn.Module):
    """A decoder whose every step draws from one learnable word distribution (the decoder interface of core.nn.model)."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def init_state(self, feats):
        return {"h": feats.new_zeros(feats.size(0), 1)}  # (B, 1)

    def step(self, tokens, state):
        return self.bias.expand(tokens.size(0), -1), state, None  # (B, V)


def test_scst_steps_raise_the_reward():
    torch.manual_seed(0)
    vocab = Vocabulary(["dog", "runs", "grass", "man", "bike", "snow", "the", "on"])
    decoder = _BagOfWords(len(vocab))
    reward = CiderReward(CORPUS)
    feats = torch.zeros(4, 1, 2)  # (B, P, C): the toy decoder ignores the image
    opt = torch.optim.Adam(decoder.parameters(), lr=0.1)
    rewards = []
    for _ in range(40):
        loss, stats = scst_step(decoder, feats, [REFS] * 4, reward, vocab, n_samples=5, max_len=6)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rewards.append(stats["reward"])
        assert set(stats) == {"reward", "ended", "dangling", "words"}
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 0.1


def test_scst_run_starts_from_a_saved_model(tmp_path, tiny_attention_bundle):
    """--init-from: the bundle's vocabulary and weights (fp16 or not) start the run; the flags' widths give way."""
    data = make_flickr(tmp_path / "data")
    cfg = tiny_train_config(data, tmp_path, init_from=str(tiny_attention_bundle), epochs=0, scst_epochs=1,
                            scst_batch_size=4, scst_lr=1e-5, scst_max_len=6, hidden_dim=16, model_name="scst", log_every=2)
    seen = []
    out = run(cfg, tmp_path / "run", listeners=[seen.append])
    start = load_bundle(tiny_attention_bundle)
    assert read_vocab(out, start.config).itos == start.vocab.itos
    assert load_bundle(out).config.hidden_dim == start.config.hidden_dim
    assert any(e["event"] == "step" and e["scst"] for e in seen)
    assert any(e["event"] == "log" and "scst_reward" in e for e in seen)
    # a tiny learning rate: the result stays next to the starting weights (it did not start from scratch)
    a, b = load_file(tiny_attention_bundle / "model.safetensors"), load_file(out / "model.safetensors")
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 0.01
