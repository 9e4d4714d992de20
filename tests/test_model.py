import pytest
import torch

from core.base.config import ModelConfig
from core.nn.model import CaptionModel
from core.data.vocabulary import PAD


def tiny_model(decoder, vocab_size=12, with_encoder=False):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab_size, decoder=decoder, embed_dim=16, hidden_dim=24, attention_dim=8, dropout=0.0)
    return CaptionModel(cfg, with_encoder=with_encoder, pretrained=False).eval()


@pytest.mark.parametrize("decoder", ["show_tell", "attention", "transformer"])
def test_forward_shapes(decoder):
    m = tiny_model(decoder)
    feats, caps = torch.randn(3, 49, 1280), torch.randint(4, 12, (3, 7))
    logits, alphas = m(feats, caps)
    assert logits.shape == (3, 6, 12)
    if decoder == "attention":
        assert alphas.shape == (3, 6, 49)
        assert torch.allclose(alphas.sum(-1), torch.ones(3, 6), atol=1e-5)
    else:
        assert alphas is None


@pytest.mark.parametrize("decoder", ["show_tell", "attention", "transformer"])
def test_step_by_step_decoding_matches_teacher_forcing(decoder):
    """Decoding runs init_state/step; training runs forward: both must compute the same model."""
    m = tiny_model(decoder)
    feats, caps = torch.randn(3, 49, 1280), torch.randint(4, 12, (3, 7))
    caps[0, 3:] = PAD  # captions of different lengths: the attention decoder sorts and shrinks the batch
    caps[2, 5:] = PAD
    with torch.no_grad():
        logits, _ = m(feats, caps)
        state = m.decoder.init_state(feats)
        for t in range(caps.size(1) - 1):
            step_logits, state, _ = m.decoder.step(caps[:, t], state)
            real = caps[:, t + 1] != PAD  # positions the loss reads
            assert torch.allclose(step_logits[real], logits[real, t], atol=1e-5)


def test_encoder_gives_a_grid_and_channels_last_does_not_change_results():
    m = tiny_model("attention", with_encoder=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = m.encode(x)
        ref = m.encoder.cnn.model.forward_features(x.contiguous())
    assert feats.shape == (1, 49, 1280)
    assert torch.allclose(feats, ref.flatten(2).transpose(1, 2), atol=1e-4)


def test_bundle_weights_exclude_a_frozen_backbone():
    m = tiny_model("show_tell", with_encoder=True)
    assert not any(k.startswith("encoder.") for k in m.trainable_state_dict())
    m.cfg.fine_tune = True
    assert any(k.startswith("encoder.") for k in m.trainable_state_dict())


def test_transformer_cached_steps_equal_the_full_forward_pass_with_dropout_off_and_in_bf16():
    """The key/value cache: each step sees only its own word, yet gives the logits of the whole teacher-forced pass,
    and its attention map is a distribution over the grid cells (the mean of the last layer's heads)."""
    m = tiny_model("transformer", vocab_size=15)
    torch.manual_seed(1)
    feats, caps = torch.randn(4, 64, 1280), torch.randint(4, 15, (4, 9))
    caps[1, 4:] = PAD
    with torch.no_grad():
        logits, _ = m(feats, caps)
        state = m.decoder.init_state(feats)
        for t in range(caps.size(1) - 1):
            step_logits, state, alpha = m.decoder.step(caps[:, t], state)
            assert state["k0"].shape == (4, m.cfg.num_heads, t + 1, m.cfg.hidden_dim // m.cfg.num_heads)
            assert alpha.shape == (4, 64) and torch.allclose(alpha.sum(-1), torch.ones(4), atol=1e-5)
            real = caps[:, t + 1] != PAD
            assert torch.allclose(step_logits[real], logits[real, t], atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            step_logits, _, alpha = m.decoder.step(caps[:, 0], m.decoder.init_state(feats))
    assert step_logits.dtype == torch.float32
    assert torch.allclose(step_logits, logits[:, 0], atol=0.1)


def test_transformer_needs_heads_that_divide_its_width():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        CaptionModel(ModelConfig(vocab_size=9, decoder="transformer", hidden_dim=30, num_heads=8), with_encoder=False,
                     pretrained=False)


@pytest.mark.parametrize("decoder", ["show_tell", "attention", "transformer"])
def test_each_image_once_with_an_index_gives_the_captions_of_repeated_images(decoder):
    """group_by_image: feats of each image once plus image_index computes what feats repeated per caption does."""
    m = tiny_model(decoder)
    feats, caps = torch.randn(2, 49, 1280), torch.randint(4, 12, (5, 7))
    caps[3, 4:] = PAD
    index = torch.tensor([1, 0, 0, 1, 1])
    with torch.no_grad():
        once, a1 = m(feats, caps, image_index=index)
        repeated, a2 = m(feats[index], caps)
    assert torch.allclose(once, repeated, atol=1e-5)
    assert (a1 is None) == (a2 is None) and (a1 is None or torch.allclose(a1, a2, atol=1e-6))
