"""Caption models: a CNN backbone (encoder) and one of two LSTM decoders.

Both decoders share one interface, so training, greedy decoding and beam search do not care which
one they drive:
    forward(feats, captions) -> logits, alphas        teacher-forced, for training
    init_state(feats)        -> state                 dict of batch-first tensors (beam search reorders them)
    step(tokens, state)      -> logits, state, alpha   one word at a time, for decoding
`feats` is always (B, P, C): P grid cells of C channels (P = 1 for pooled features).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import build_backbone, get_spec
from .config import ModelConfig
from .vocabulary import PAD


class Encoder(nn.Module):
    """Backbone -> grid of feature vectors."""

    def __init__(self, backbone: str, pretrained: bool = True):
        super().__init__()
        # channels_last runs convolutions faster on CUDA and on CPU alike (~1.4x measured on a 2-core CPU)
        self.cnn = build_backbone(backbone, pretrained).to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.cnn(images.contiguous(memory_format=torch.channels_last))  # (B, C, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, P, C) with P = h * w

    @property
    def can_classify(self) -> bool:
        return hasattr(self.cnn, "classify_features")

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, P, C) from forward() -> the backbone's own ImageNet logits (B, 1000), nearly free."""
        return self.cnn.classify_features(feats)


class ShowTellDecoder(nn.Module):
    """Show and Tell (Vinyals et al. 2015): the pooled image is the LSTM's first input."""

    def __init__(self, cfg: ModelConfig, feature_dim: int):
        super().__init__()
        self.img_proj = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, cfg.embed_dim))
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden_dim, batch_first=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.hidden_dim, cfg.vocab_size)

    def _image_input(self, feats: torch.Tensor) -> torch.Tensor:
        return self.drop(self.img_proj(feats.mean(1)))  # (B, E)

    def forward(self, feats, captions):
        """feats (B, P, C), captions (B, L) starting with <start> -> logits (B, L-1, V) for captions[:, 1:]."""
        words = self.embed(captions[:, :-1])  # (B, L-1, E)
        x = torch.cat([self._image_input(feats).unsqueeze(1), self.drop(words)], 1)  # (B, L, E)
        out, _ = self.lstm(x)  # (B, L, H)
        return self.fc(self.drop(out[:, 1:])), None  # (B, L-1, V); position 0 only read the image

    def init_state(self, feats):
        _, (h, c) = self.lstm(self._image_input(feats).unsqueeze(1))  # h, c: (1, B, H)
        return {"h": h[0], "c": c[0]}  # (B, H) each: batch first so beam search can reorder rows

    def step(self, tokens, state):
        x = self.embed(tokens).unsqueeze(1)  # (B, 1, E)
        out, (h, c) = self.lstm(x, (state["h"].unsqueeze(0).contiguous(), state["c"].unsqueeze(0).contiguous()))
        return self.fc(out[:, 0]), {"h": h[0], "c": c[0]}, None  # logits (B, V)


class AttentionDecoder(nn.Module):
    """Show, Attend and Tell (Xu et al. 2015), soft attention with the gating scalar beta."""

    def __init__(self, cfg: ModelConfig, feature_dim: int):
        super().__init__()
        A, H, D = cfg.attention_dim, cfg.hidden_dim, cfg.feature_proj_dim
        # Normalise and narrow the CNN's channels once per image: every later step (attention, gate, LSTM
        # input) then works on D instead of C channels, about twice as fast to train on a CPU.
        # (no affine LayerNorm parameters: the Linear after it absorbs them, and without them no gradient has
        # to flow back through the (B, P, C) grid, a third of the backward pass on a CPU)
        self.proj = nn.Sequential(nn.LayerNorm(feature_dim, elementwise_affine=False), nn.Linear(feature_dim, D),
                                  nn.ReLU(), nn.Dropout(cfg.dropout))
        feature_dim = D
        self.feat_att = nn.Linear(feature_dim, A)
        self.hid_att = nn.Linear(H, A)
        self.att_score = nn.Linear(A, 1)
        self.init_h = nn.Linear(feature_dim, H)
        self.init_c = nn.Linear(feature_dim, H)
        self.gate = nn.Linear(H, feature_dim)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.cell = nn.LSTMCell(cfg.embed_dim + feature_dim, H)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(H, cfg.vocab_size)

    def init_state(self, feats):
        feats = self.proj(feats)  # (B, P, D)
        mean = feats.mean(1)  # (B, D)
        return {"h": torch.tanh(self.init_h(mean)), "c": torch.tanh(self.init_c(mean)),  # (B, H)
                "feats": feats, "feats_att": self.feat_att(feats)}  # (B, P, D), (B, P, A): computed once

    def _advance(self, word, state):
        """One LSTM step with attention: word (B, E) -> new state, alpha (B, P)."""
        h, c, feats = state["h"], state["c"], state["feats"]
        e = self.att_score(torch.tanh(state["feats_att"] + self.hid_att(h).unsqueeze(1))).squeeze(2)  # (B, P)
        alpha = e.softmax(1)  # (B, P)
        context = torch.bmm(alpha.unsqueeze(1), feats).squeeze(1)  # (B, D) without a (B, P, D) temporary
        context = torch.sigmoid(self.gate(h)) * context  # beta gate: lets the model look away for "a", "of"
        h, c = self.cell(torch.cat([word, context], 1), (h, c))  # (B, H) each
        return {**state, "h": h, "c": c}, alpha

    def forward(self, feats, captions):
        """feats (B, P, C), captions (B, L) -> logits (B, L-1, V), alphas (B, L-1, P).

        Captions are processed longest first and step t only runs the n_t captions still going, so a batch
        costs the sum of its caption lengths, not B x the longest (about 40% less on Flickr8k and COCO).
        Positions past a caption's <end> get zeros; the loss ignores them (their targets are <pad>).
        """
        B, T = captions.size(0), captions.size(1) - 1
        lengths = (captions[:, 1:] != PAD).sum(1)  # (B,) targets per caption, <end> included
        order = lengths.argsort(descending=True)
        active = [int((lengths > t).sum()) for t in range(T)]  # n_t, non-increasing
        state = self.init_state(feats[order])
        words = self.drop(self.embed(captions[order, :-1]))  # (B, T, E)
        hs, alphas = [], []
        for t in range(T):
            n = active[t]
            if n == 0:
                break
            state = {k: v[:n] for k, v in state.items()}
            state, alpha = self._advance(words[:n, t], state)
            hs.append(F.pad(state["h"], (0, 0, 0, B - n)))  # (B, H)
            alphas.append(F.pad(alpha, (0, 0, 0, B - n)))  # (B, P)
        h = torch.stack(hs, 1)  # (B, T', H)
        logits = self.fc(self.drop(h))  # (B, T', V): one big output matmul, not one per word
        logits = F.pad(logits, (0, 0, 0, T - h.size(1)))  # (B, T, V)
        alphas = F.pad(torch.stack(alphas, 1), (0, 0, 0, T - h.size(1)))  # (B, T, P)
        restore = order.argsort()
        return logits[restore], alphas[restore]

    def step(self, tokens, state):
        state, alpha = self._advance(self.embed(tokens), state)
        h = self.drop(state["h"])  # (B, H)
        if h.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # bf16 decoding (core.caption) keeps the output layer in fp32: bf16 logits (3 significant digits)
            # reorder close beams (46 of 480 Flickr8k dev captions changed; 8 with fp32 logits)
            with torch.autocast("cpu", enabled=False):
                return self.fc(h.float()), state, alpha  # logits (B, V)
        return self.fc(h), state, alpha  # logits (B, V)


class CaptionModel(nn.Module):
    """Encoder + decoder. The encoder is optional: training on cached features needs only the decoder."""

    def __init__(self, cfg: ModelConfig, with_encoder: bool = True, pretrained: bool = True):
        super().__init__()
        self.cfg = cfg
        self.spec = get_spec(cfg.backbone)
        self.encoder = Encoder(cfg.backbone, pretrained) if with_encoder else None
        decoder_cls = AttentionDecoder if cfg.decoder == "attention" else ShowTellDecoder
        if cfg.ensemble > 1:  # several decoders over this one encoder (core.ensemble)
            from .ensemble import EnsembleDecoder

            self.decoder = EnsembleDecoder([decoder_cls(cfg, self.spec.feature_dim) for _ in range(cfg.ensemble)])
        else:
            self.decoder = decoder_cls(cfg, self.spec.feature_dim)

    @property
    def has_attention(self) -> bool:
        return self.cfg.decoder == "attention"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) -> feats (B, P, C)."""
        if self.encoder is None:
            raise RuntimeError("this model was built without its encoder (cached-feature training)")
        return self.encoder(images)

    def forward(self, feats, captions):
        return self.decoder(feats, captions)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a bundle stores: the decoder, plus the encoder only when it was fine-tuned."""
        return {k: v for k, v in self.state_dict().items() if self.cfg.fine_tune or not k.startswith("encoder.")}
