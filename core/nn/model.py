"""Caption models: a CNN backbone (encoder) and one of three decoders (two LSTMs, one Transformer).

All decoders share one interface, so training, greedy decoding and beam search do not care which
one they drive:
    forward(feats, captions) -> logits, alphas        teacher-forced, for training
    init_state(feats)        -> state                 dict of batch-first tensors (beam search reorders them)
    step(tokens, state)      -> logits, state, alpha   one word at a time, for decoding
`feats` is always (B, P, C): P grid cells of C channels (P = 1 for pooled features); a decoder that reads the
classifier's tags (cfg.tag_slots > 0) takes one more row, the tag row (see `with_tag_row`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.base.config import GRID_DECODERS, ModelConfig
from core.data.object_words import object_words
from core.data.vocabulary import PAD, UNK
from core.nn.backbones import build_backbone, get_spec
from core.nn.ensemble import EnsembleDecoder


class Encoder(nn.Module):
    """Backbone -> grid of feature vectors."""

    def __init__(self, backbone: str, pretrained: bool = True):
        super().__init__()
        # channels_last runs convolutions faster on CUDA and on CPU alike (~1.4x measured on a 2-core CPU)
        self.cnn = build_backbone(backbone, pretrained).to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.cnn(images.contiguous(memory_format=torch.channels_last))  # (B, C, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, P, C) with P = h * w

    def split(self, top: int) -> tuple[nn.Module, nn.Module]:
        """(lower, upper): images -> the input of the last `top` stages (B, C', h, w) -> their output (B, C, h', w')."""
        from core.nn.backbones import split_top

        return split_top(self.cnn, top)

    @property
    def can_classify(self) -> bool:
        return hasattr(self.cnn, "classify_features")

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, P, C) from forward() -> the backbone's own ImageNet logits (B, 1000), nearly free."""
        return self.cnn.classify_features(feats)


# ----------------------------------------------------------------------------- the classifier's nouns as input
# A tag-reading decoder takes feats (B, P + 1, C): the P grid cells, then one tag row whose first N channels hold the
# backbone classifier's probabilities of the N plain nouns (core.caption.tags: ImageNet's classes summed into the
# nouns a caption uses) and whose last channel is 1.0 where there is no photo (a caption from text-only data: its grid
# rows are zeros and a learned "no photo" vector stands for them). Carried as a row of feats, the tags go wherever
# the grid goes: greedy and beam search (which repeat and split feats), ensembles, cached-feature training.
NO_PHOTO = -1  # the tag row's channel that flags a caption without a photo


def with_tag_row(grid: torch.Tensor, noun_probs: torch.Tensor, photo: torch.Tensor | None = None) -> torch.Tensor:
    """grid (B, P, C), noun_probs (B, N) -> feats (B, P + 1, C); photo (B,) bool, None: every row has its photo."""
    B, P, C = grid.shape
    if noun_probs.size(1) >= C:
        raise ValueError(f"{noun_probs.size(1)} nouns do not fit a tag row of {C} channels")
    row = grid.new_zeros(B, 1, C)  # (B, 1, C)
    row[:, 0, : noun_probs.size(1)] = noun_probs.to(grid.dtype)
    if photo is not None:
        row[:, 0, NO_PHOTO] = (~photo).to(grid.dtype)
    return torch.cat([grid, row], 1)  # (B, P + 1, C)


def tag_vocabulary(stoi: dict) -> list[int]:
    """The caption vocabulary's id of each plain noun (object_words().nouns order): the noun itself, else its last
    word ("hot dog" -> "dog"), else <unk>. A tag slot starts from that word's embedding, so a noun the captions use
    is read and written through the same vector."""
    return [stoi.get(n, stoi.get(n.split()[-1], UNK)) for n in object_words().nouns]


COPY_FORMS = 2  # the words a tag can raise directly: its noun's singular and plural ("zebra", "zebras")
# The copy size is this times a small network's output. Why: Adam moves a weight by about the learning rate per
# step, so in a 1,580-step run at 5e-4 an unscaled size grew to 0.5 logit units at most (log p(bear | "a") moved by
# 0.5 with a 0.95 bear tag, after 316 steps); a few logit units are needed to turn "a man" into "a bear".
COPY_SCALE = 8.0


def copy_vocabulary(stoi: dict) -> list[list[int]]:
    """Each plain noun's singular and plural as caption-vocabulary ids (object_words: the noun's first two word
    forms; <unk> where the vocabulary lacks one, and such a word is never raised)."""
    ow = object_words()
    out = []
    for noun in ow.nouns:
        forms = (list(ow.words.get(noun, [])) + [noun])[:COPY_FORMS]
        forms += [forms[-1]] * (COPY_FORMS - len(forms))
        out.append([stoi.get(w, UNK) for w in forms])
    return out


class TagSlots(nn.Module):
    """The tag row -> K memory slots: the K likeliest nouns' word embeddings, moved by their probability, plus a
    learned vector per slot rank; the learned "no photo" vector that replaces the grid of a text-only caption; and
    the copy path.

    The copy path (as in pointer-generator and NOC's copying: See et al. 2017, Venugopalan et al. 2017) adds to
    the output logit of each tag's singular and plural a learned amount: size(tag's probability) x gate(decoder's
    state, per form). Why: reading a tag through attention is a route the model must discover, and in the
    Flickr8k + caption-text mix it never did (a confident "bear" tag moved log p(bear) by 0.01). The copy path
    is found at once: its gradient reaches the size and the gate from the first step a tag word is the target.
    Both start at zero effect (size's last layer is zero), so training starts where a tag-free model would.
    """

    def __init__(self, k: int, embed_dim: int, out_dim: int, hidden_dim: int):
        super().__init__()
        self.k, self.n = k, len(object_words().nouns)
        # noun -> vocabulary ids: set from the vocabulary when the model is made (set_tag_vocabulary); saved with it
        self.register_buffer("noun_vocab", torch.full((self.n,), UNK, dtype=torch.long))
        self.register_buffer("copy_vocab", torch.full((self.n, COPY_FORMS), UNK, dtype=torch.long))
        self.word = nn.Linear(embed_dim, out_dim)
        self.prob = nn.Linear(1, out_dim)
        self.rank = nn.Parameter(torch.zeros(k, out_dim))
        self.no_photo = nn.Parameter(torch.zeros(out_dim))
        self.copy_size = nn.Sequential(nn.Linear(2, 16), nn.GELU(), nn.Linear(16, 1))  # (p, log p) -> logit units
        nn.init.zeros_(self.copy_size[2].weight)
        nn.init.zeros_(self.copy_size[2].bias)
        self.copy_gate = nn.Linear(hidden_dim, COPY_FORMS)  # decoder state -> is this the place for the noun?

    def top(self, row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tag row (B, C) -> the K likeliest nouns' probabilities and indices, (B, K) each."""
        return row[:, : self.n].float().topk(self.k, dim=1)

    def copy_source(self, row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tag row (B, C) -> the K likeliest nouns' probabilities (B, K) and word ids (B, K, F): what the copy path
        reads at every step (computed once per photo, kept in the decoding state)."""
        p, noun = self.top(row)  # (B, K) each
        return p, self.copy_vocab[noun]  # (B, K), (B, K, F)

    def copy(self, logits: torch.Tensor, h: torch.Tensor, p: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """logits (B, T, V) or (B, V), decoder states h (B, T, H) or (B, H) -> logits with each tag's singular and
        plural raised by size(p) x gate(h). Computed in fp32 (also under bf16 autocast: logits stay fp32)."""
        single = logits.dim() == 2
        if single:
            logits, h = logits.unsqueeze(1), h.unsqueeze(1)  # (B, 1, V), (B, 1, H)
        B, T, _ = logits.shape
        with torch.autocast(logits.device.type, enabled=False):
            size = COPY_SCALE * self.copy_size(torch.stack([p, p.clamp_min(1e-4).log()], -1).float()).squeeze(-1)  # (B, K)
            gate = torch.sigmoid(self.copy_gate(h.float()))  # (B, T, F)
            bias = size[:, None, :, None] * gate[:, :, None, :]  # (B, T, K, F)
            bias = bias.masked_fill((ids == UNK)[:, None], 0.0).flatten(2)  # (B, T, K*F)
            index = ids.flatten(1)[:, None].expand(B, T, -1)  # (B, T, K*F)
            out = logits.float().scatter_add(-1, index, bias)  # (B, T, V)
        return out[:, 0] if single else out

    def split(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """feats (B, P + 1, C) -> grid (B, P, C), tag row (B, C), photo (B,) bool."""
        return feats[:, :-1], feats[:, -1], feats[:, -1, NO_PHOTO] < 0.5

    def forward(self, row: torch.Tensor, embed: nn.Embedding) -> torch.Tensor:
        """tag row (B, C) -> slots (B, K, out_dim)."""
        p, noun = self.top(row)  # (B, K) each
        words = self.word(embed(self.noun_vocab[noun]))  # (B, K, out_dim)
        return words + self.prob(p.unsqueeze(-1).to(words.dtype)) + self.rank  # (B, K, out_dim)

    def cells(self, cells: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
        """Projected grid cells (B, P, D) with the rows that have no photo replaced by the "no photo" vector."""
        return torch.where(photo[:, None, None], cells, self.no_photo.to(cells.dtype))  # (B, P, D)


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

    def forward(self, feats, captions, image_index=None):
        """feats (B, P, C), captions (B, L) starting with <start> -> logits (B, L-1, V) for captions[:, 1:].
        image_index (B,) (optional): caption i is of image image_index[i] of feats (U, P, C), each image once."""
        words = self.embed(captions[:, :-1])  # (B, L-1, E)
        image = self._image_input(feats)  # (U or B, E)
        image = image if image_index is None else image[image_index]  # (B, E)
        x = torch.cat([image.unsqueeze(1), self.drop(words)], 1)  # (B, L, E)
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
        self.tags = TagSlots(cfg.tag_slots, cfg.embed_dim, feature_dim, H) if cfg.tag_slots else None

    def init_state(self, feats):
        if self.tags is None:
            feats = self.proj(feats)  # (B, P, D)
            mean = feats.mean(1)  # (B, D)
        else:  # the grid's cells, then the tags' slots, all attended alike
            grid, row, photo = self.tags.split(feats)
            cells = self.tags.cells(self.proj(grid), photo)  # (B, P, D)
            mean = cells.mean(1)  # (B, D)
            feats = torch.cat([cells, self.tags(row, self.embed)], 1)  # (B, P + K, D)
        state = {"h": torch.tanh(self.init_h(mean)), "c": torch.tanh(self.init_c(mean)),  # (B, H)
                 "feats": feats, "feats_att": self.feat_att(feats)}  # (B, P, D), (B, P, A): computed once
        if self.tags is not None:
            state["tag_p"], state["tag_ids"] = self.tags.copy_source(row)  # (B, K), (B, K, F)
        return state

    def _advance(self, word, state):
        """One LSTM step with attention: word (B, E) -> new state, alpha (B, P)."""
        h, c, feats = state["h"], state["c"], state["feats"]
        e = self.att_score(torch.tanh(state["feats_att"] + self.hid_att(h).unsqueeze(1))).squeeze(2)  # (B, P)
        alpha = e.softmax(1)  # (B, P)
        context = torch.bmm(alpha.unsqueeze(1), feats).squeeze(1)  # (B, D) without a (B, P, D) temporary
        context = torch.sigmoid(self.gate(h)) * context  # beta gate: lets the model look away for "a", "of"
        h, c = self.cell(torch.cat([word, context], 1), (h, c))  # (B, H) each
        return {**state, "h": h, "c": c}, alpha

    def forward(self, feats, captions, image_index=None):
        """feats (B, P, C), captions (B, L) -> logits (B, L-1, V), alphas (B, L-1, P). With image_index (B,),
        caption i is of image image_index[i] of feats (U, P, C): each image's projection is computed once.

        Captions are processed longest first and step t only runs the n_t captions still going, so a batch
        costs the sum of its caption lengths, not B x the longest (about 40% less on Flickr8k and COCO).
        Positions past a caption's <end> get zeros; the loss ignores them (their targets are <pad>).
        """
        B, T = captions.size(0), captions.size(1) - 1
        lengths = (captions[:, 1:] != PAD).sum(1)  # (B,) targets per caption, <end> included
        order = lengths.argsort(descending=True)
        active = [int((lengths > t).sum()) for t in range(T)]  # n_t, non-increasing
        if image_index is None:
            state = self.init_state(feats[order])
        else:
            state = {k: v[image_index[order]] for k, v in self.init_state(feats).items()}  # (B, ...) from (U, ...)
        copy = (state["tag_p"], state["tag_ids"]) if self.tags is not None else None  # (B, K), (B, K, F), sorted
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
        if copy is not None:
            logits = self.tags.copy(logits, h, *copy)  # (B, T', V)
        logits = F.pad(logits, (0, 0, 0, T - h.size(1)))  # (B, T, V)
        alphas = F.pad(torch.stack(alphas, 1), (0, 0, 0, T - h.size(1)))  # (B, T, P)
        restore = order.argsort()
        return logits[restore], alphas[restore]

    def step(self, tokens, state):
        state, alpha = self._advance(self.embed(tokens), state)
        if self.tags is not None:
            alpha = alpha[:, : -self.tags.k]  # (B, P): the map shows the grid
        h = self.drop(state["h"])  # (B, H)
        if h.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # bf16 decoding (core.nn.captioner) keeps the output layer in fp32: bf16 logits (3 significant digits)
            # reorder close beams (46 of 480 Flickr8k dev captions changed; 8 with fp32 logits)
            with torch.autocast("cpu", enabled=False):
                logits = self.fc(h.float())  # (B, V)
        else:
            logits = self.fc(h)  # (B, V)
        if self.tags is not None:
            logits = self.tags.copy(logits, h, state["tag_p"], state["tag_ids"])  # (B, V)
        return logits, state, alpha


class _Attention(nn.Module):
    """Multi-head attention whose keys and values can be computed once and kept (the decoding cache)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        return x.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # (B, h, T, D/h)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(x).chunk(2, -1)  # (B, T, D) each
        return self._split(k), self._split(v)  # (B, h, T, D/h) each

    def forward(self, x, k, v, causal: bool = False, weights: bool = False):
        """x (B, T, D) attends to k, v (B, h, S, D/h) -> (B, T, D), and the heads' mean weights (B, T, S) if asked."""
        q = self._split(self.q(x))  # (B, h, T, D/h)
        mean_weights = None
        if weights:  # spelled out: scaled_dot_product_attention does not return its weights
            att = (q @ k.transpose(-1, -2)) * q.size(-1) ** -0.5  # (B, h, T, S)
            att = att.float().softmax(-1)
            mean_weights = att.mean(1)  # (B, T, S)
            out = att.to(v.dtype) @ v  # (B, h, T, D/h)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                 dropout_p=self.dropout if self.training else 0.0)
        B, _, T, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(B, T, -1)), mean_weights  # (B, T, D)


class _Block(nn.Module):
    """Pre-LayerNorm decoder layer: causal self-attention, cross-attention over the image grid, feed-forward."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_att = _Attention(d, heads, dropout)
        self.cross_att = _Attention(d, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, self_kv, cross_kv, causal: bool, weights: bool = False):
        """x (B, T, D); self_kv: keys/values of the words before x (None: x is the whole caption) -> x, the keys/values
        of x's words (for the cache), the last cross-attention's mean weights (B, T, P) when asked."""
        h = self.ln1(x)
        k, v = self.self_att.keys_values(h)  # (B, h, T, D/h)
        if self_kv is not None:
            k, v = torch.cat([self_kv[0], k], 2), torch.cat([self_kv[1], v], 2)  # (B, h, t + T, D/h)
        x = x + self.drop(self.self_att(h, k, v, causal=causal)[0])
        out, w = self.cross_att(self.ln2(x), *cross_kv, weights=weights)
        x = x + self.drop(out)
        x = x + self.drop(self.ffn(self.ln3(x)))
        return x, (k, v), w


MAX_CELLS = 1024  # grid cells a Transformer decoder has position embeddings for (32 x 32; Lite2 gives 8 x 8)


class TransformerDecoder(nn.Module):
    """A Transformer decoder (Vaswani et al. 2017) with pre-LayerNorm layers (Xiong et al. 2020, stabler without
    warm-up tricks), learned positions for words and for grid cells, over the projected CNN grid as memory.

    Decoding keeps a key/value cache in the state: the cross-attention keys/values of every layer, computed once in
    `init_state` (the same for every step, so beam search never reorders them), and the self-attention keys/values
    of the words so far, one row per beam (reordered by beam search like the LSTM's h and c). A step then costs one
    word's worth of work, not the whole caption again. The attention map shown in the app is the mean over heads of
    the last layer's cross-attention.
    """

    def __init__(self, cfg: ModelConfig, feature_dim: int):
        super().__init__()
        D, heads = cfg.hidden_dim, cfg.num_heads
        if D % heads:
            raise ValueError(f"hidden_dim {D} must be a multiple of num_heads {heads}")
        self.heads = heads
        self.proj = nn.Sequential(nn.LayerNorm(feature_dim, elementwise_affine=False), nn.Linear(feature_dim, D))
        self.cell_pos = nn.Embedding(MAX_CELLS, D)
        self.mem_ln = nn.LayerNorm(D)
        self.embed = nn.Embedding(cfg.vocab_size, D)
        self.word_pos = nn.Embedding(cfg.max_len + 2, D)  # <start>, max_len words, <end>
        self.blocks = nn.ModuleList(_Block(D, heads, cfg.dropout) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(D)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(D, cfg.vocab_size)
        self.tags = TagSlots(cfg.tag_slots, D, D, D) if cfg.tag_slots else None
        for emb in (self.cell_pos, self.embed, self.word_pos):
            nn.init.normal_(emb.weight, std=0.02)

    def _memory(self, feats):
        if self.tags is None:
            mem = self.proj(feats) + self.cell_pos.weight[: feats.size(1)]  # (B, P, D)
        else:  # the grid's cells, then the tags' slots
            grid, row, photo = self.tags.split(feats)
            cells = self.tags.cells(self.proj(grid), photo) + self.cell_pos.weight[: grid.size(1)]  # (B, P, D)
            mem = torch.cat([cells, self.tags(row, self.embed)], 1)  # (B, P + K, D)
        return self.mem_ln(self.drop(mem))

    def _words(self, tokens, start: int):
        """tokens (B, T) at positions start.. -> (B, T, D)."""
        pos = torch.arange(start, start + tokens.size(1), device=tokens.device).clamp(max=self.word_pos.num_embeddings - 1)
        return self.drop(self.embed(tokens) + self.word_pos(pos))

    def _logits(self, x, copy=None):
        """x (B, D) -> logits (B, V); copy: the tags' (p (B, K), ids (B, K, F)) for the copy path."""
        x = self.ln_f(x)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):  # fp32 logits under bf16, as AttentionDecoder.step
                logits = self.fc(x.float())
        else:
            logits = self.fc(x)
        return logits if copy is None else self.tags.copy(logits, x, *copy)

    def forward(self, feats, captions, image_index=None):
        """feats (B, P, C), captions (B, L) -> logits (B, L-1, V), None (no per-word attention regulariser).
        Padding after <end> needs no mask: causal attention never lets a real word see a later position.
        image_index (B,) (optional): caption i is of image image_index[i] of feats (U, P, C); the memory and its
        keys/values are then computed once per image, not once per caption (10% of a step on Flickr8k, CPU)."""
        mem = self._memory(feats)  # (U or B, P, D)
        x = self._words(captions[:, :-1], 0)  # (B, L-1, D)
        for blk in self.blocks:
            k, v = blk.cross_att.keys_values(mem)  # (U or B, h, P, D/h)
            if image_index is not None:
                k, v = k[image_index], v[image_index]  # (B, h, P, D/h)
            x, _, _ = blk(x, None, (k, v), causal=True)
        x = self.ln_f(x)
        logits = self.fc(x)  # (B, L-1, V)
        if self.tags is not None:
            p, ids = self.tags.copy_source(feats[:, -1])  # (U or B, K), (U or B, K, F)
            if image_index is not None:
                p, ids = p[image_index], ids[image_index]  # (B, K), (B, K, F)
            logits = self.tags.copy(logits, x, p, ids)
        return logits, None

    def init_state(self, feats):
        mem = self._memory(feats)  # (B, P, D)
        B, D = feats.size(0), mem.size(2)
        empty = mem.new_zeros(B, self.heads, 0, D // self.heads)  # (B, h, 0, D/h): no words yet
        state = {}
        for i, blk in enumerate(self.blocks):
            state[f"mk{i}"], state[f"mv{i}"] = blk.cross_att.keys_values(mem)  # (B, h, P, D/h): computed once
            state[f"k{i}"], state[f"v{i}"] = empty, empty
        if self.tags is not None:
            state["tag_p"], state["tag_ids"] = self.tags.copy_source(feats[:, -1])  # (B, K), (B, K, F)
        return state

    def step(self, tokens, state):
        t = state["k0"].size(2)  # words already in the cache
        x = self._words(tokens.unsqueeze(1), t)  # (B, 1, D)
        new, last = dict(state), len(self.blocks) - 1
        alpha = None
        for i, blk in enumerate(self.blocks):
            x, (k, v), w = blk(x, (state[f"k{i}"], state[f"v{i}"]), (state[f"mk{i}"], state[f"mv{i}"]),
                               causal=False, weights=i == last)
            new[f"k{i}"], new[f"v{i}"] = k, v  # (B, h, t + 1, D/h)
            if w is not None:
                alpha = w[:, 0, : w.size(-1) - (self.tags.k if self.tags is not None else 0)]  # (B, P): the grid's
        copy = (state["tag_p"], state["tag_ids"]) if self.tags is not None else None
        return self._logits(x[:, 0], copy), new, alpha  # logits (B, V)


DECODER_CLASSES = {"attention": AttentionDecoder, "show_tell": ShowTellDecoder, "transformer": TransformerDecoder}


class CaptionModel(nn.Module):
    """Encoder + decoder. The encoder is optional: training on cached features needs only the decoder."""

    def __init__(self, cfg: ModelConfig, with_encoder: bool = True, pretrained: bool = True):
        super().__init__()
        self.cfg = cfg
        self.spec = get_spec(cfg.backbone)
        self.encoder = Encoder(cfg.backbone, pretrained) if with_encoder else None
        decoder_cls = DECODER_CLASSES[cfg.decoder]
        if cfg.ensemble > 1:  # several decoders over this one encoder (core.nn.ensemble)
            self.decoder = EnsembleDecoder([decoder_cls(cfg, self.spec.feature_dim) for _ in range(cfg.ensemble)])
        else:
            self.decoder = decoder_cls(cfg, self.spec.feature_dim)

    def set_tag_vocabulary(self, stoi: dict) -> None:
        """Point the tag slots of every decoder (ensemble members too) at this vocabulary's words."""
        ids = torch.tensor(tag_vocabulary(stoi), dtype=torch.long)  # (N,)
        forms = torch.tensor(copy_vocabulary(stoi), dtype=torch.long)  # (N, F)
        for module in self.decoder.modules():
            if isinstance(module, TagSlots):
                module.noun_vocab.copy_(ids)
                module.copy_vocab.copy_(forms)

    @property
    def has_attention(self) -> bool:
        return self.cfg.decoder in GRID_DECODERS

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) -> feats (B, P, C)."""
        if self.encoder is None:
            raise RuntimeError("this model was built without its encoder (cached-feature training)")
        return self.encoder(images)

    def forward(self, feats, captions, image_index=None):
        if image_index is None:
            return self.decoder(feats, captions)
        return self.decoder(feats, captions, image_index=image_index)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a bundle stores: the decoder, plus the encoder only when it was fine-tuned."""
        return {k: v for k, v in self.state_dict().items() if self.cfg.fine_tune or not k.startswith("encoder.")}
