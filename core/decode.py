"""Decoding: greedy, batched beam search and sampling. Tensors in, token ids out; no I/O.

All three ban <pad>, <start> and <unk> as outputs, give every caption at least one word and stop it at <end>.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .vocabulary import END, PAD, START, UNK

_BANNED = [PAD, START, UNK]


@dataclass
class Hypothesis:
    tokens: list[int]  # the words, without <start>/<end>
    score: float  # log-probability / (len(tokens) + 1) ** length_penalty: what beams are ranked by
    logprob: float
    finished: bool  # False when max_len was reached before <end>
    alphas: torch.Tensor | None = None  # (len(tokens), P) attention weights, attention models only


def _next_logprobs(decoder, tokens, state, first: bool):
    logits, state, alpha = decoder.step(tokens, state)
    logp = logits.float().log_softmax(-1)  # (N, V)
    logp[:, _BANNED] = float("-inf")
    if first:  # a caption has at least one word (and at least min_len words in beam search)
        logp[:, END] = float("-inf")
    return logp, state, alpha


@torch.no_grad()
def greedy_decode(decoder, feats: torch.Tensor, max_len: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """feats (B, P, C) -> tokens (B, T) ending in <end> then <pad>, summed log-probs (B,)."""
    B = feats.size(0)
    state = decoder.init_state(feats)
    word = torch.full((B,), START, dtype=torch.long, device=feats.device)
    done = torch.zeros(B, dtype=torch.bool, device=feats.device)
    score = torch.zeros(B, device=feats.device)
    out = []
    for t in range(max_len + 1):  # max_len words, then room for <end>
        if t == max_len:  # out of room: end every unfinished caption here
            out.append(torch.full_like(word, END).masked_fill(done, PAD))
            break
        logp, state, _ = _next_logprobs(decoder, word, state, first=t == 0)
        best, word = logp.max(-1)  # (B,), (B,)
        word = word.masked_fill(done, PAD)
        score += best.masked_fill(done, 0.0)
        out.append(word)
        done |= word == END
        if done.all():
            break
    return torch.stack(out, 1), score  # (B, T), (B,)


def _banned_ngram_words(history: list[int], n: int) -> list[int]:
    """Words that would repeat an n-gram already in `history` (the no-repeat-n-gram rule)."""
    if n <= 0 or len(history) < n - 1:
        return []
    prefix = tuple(history[len(history) - n + 1:])
    return [history[i + n - 1] for i in range(len(history) - n + 1) if tuple(history[i:i + n - 1]) == prefix]


@torch.no_grad()
def beam_search(decoder, feats: torch.Tensor, beam_size: int = 3, max_len: int = 20,
                length_penalty: float = 0.7, no_repeat_ngram: int = 3, min_len: int = 1) -> list[list[Hypothesis]]:
    """feats (B, P, C) -> for each image, `beam_size` hypotheses, best first.

    K live beams per image; each step looks at the 2K best extensions, moves those ending in <end> to
    the image's finished list, and keeps the best K others alive. An image is done once it has K
    finished captions; if max_len comes first, its live beams are returned unfinished.
    """
    B, K = feats.size(0), beam_size
    dev = feats.device
    state = {k: v.repeat_interleave(K, 0) for k, v in decoder.init_state(feats).items()}  # (B*K, ...)
    tokens = torch.full((B * K, 1), START, dtype=torch.long, device=dev)  # (B*K, t+1)
    scores = torch.full((B, K), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all K beams start identical: keep one so the first step gives K different words
    alpha_hist = None  # (B*K, t, P)
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B

    for t in range(max_len + 1):
        logp, state, alpha = _next_logprobs(decoder, tokens[:, -1], state, first=t < min(max(min_len, 1), max_len))
        if alpha is not None:
            alpha_hist = alpha.unsqueeze(1) if alpha_hist is None else torch.cat([alpha_hist, alpha.unsqueeze(1)], 1)
        if no_repeat_ngram:
            hist = tokens[:, 1:].tolist()
            for row, h in enumerate(hist):
                banned = _banned_ngram_words(h, no_repeat_ngram)
                if banned:
                    logp[row, banned] = float("-inf")
        V = logp.size(1)
        cand = (scores.view(-1, 1) + logp).view(B, K * V)  # (B, K*V)
        top_scores, top_idx = cand.topk(min(2 * K, K * V), dim=1)  # (B, 2K)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()

        rows, words, new_scores = [], [], []
        for b in range(B):
            live = []
            for s, i in zip(top_scores[b], top_idx[b]):
                if len(live) == K:
                    break
                row, w = b * K + i // V, i % V
                if s == float("-inf"):
                    live.append((row, PAD, s))  # a dead slot (tiny vocabularies); never chosen again
                elif w == END or t == max_len:
                    if w != END:
                        continue
                    if not done[b] and len(finished[b]) < K:
                        words_ = tokens[row, 1:].tolist()
                        a = alpha_hist[row, : len(words_)].cpu() if alpha_hist is not None else None
                        finished[b].append(Hypothesis(words_, s / (len(words_) + 1) ** length_penalty, s, True, a))
                else:
                    live.append((row, w, s))
            live += [(b * K, PAD, float("-inf"))] * (K - len(live))
            done[b] = done[b] or len(finished[b]) >= K
            for row, w, s in live:
                rows.append(row), words.append(w), new_scores.append(s)
        if all(done) or t == max_len:  # at t == max_len only captions that ended could be taken
            break
        rows_t = torch.tensor(rows, device=dev)
        tokens = torch.cat([tokens[rows_t], torch.tensor(words, device=dev).view(-1, 1)], 1)  # (B*K, t+2)
        state = {k: v[rows_t] for k, v in state.items()}
        if alpha_hist is not None:
            alpha_hist = alpha_hist[rows_t]
        scores = torch.tensor(new_scores, device=dev).view(B, K)

    results = []
    for b in range(B):
        hyps = list(finished[b])
        if len(hyps) < K:  # max_len reached before <end>: return the live beams as they stand
            for k in range(K):
                s = float(scores[b, k])
                if s == float("-inf") or len(hyps) >= K:
                    continue
                words_ = tokens[b * K + k, 1:].tolist()
                a = alpha_hist[b * K + k, : len(words_)].cpu() if alpha_hist is not None else None
                hyps.append(Hypothesis(words_, s / (len(words_) + 1) ** length_penalty, s, False, a))
        results.append(sorted(hyps, key=lambda h: h.score, reverse=True))
    return results


def sample_captions(decoder, feats: torch.Tensor, max_len: int = 20, repeats: int = 1, temperature: float = 1.0,
                    top_p: float = 1.0, min_len: int = 1):
    """Sample `repeats` captions per row of feats (B, P, C), keeping the graph for policy gradients.

    top_p < 1 is nucleus sampling: each word is drawn from the smallest set of words whose probabilities
    add up to top_p, so that varied captions stay clear of the long tail of unlikely words.

    -> tokens (B*repeats, T) (then <pad> after <end>), log-probs of the chosen words (B*repeats, T), and
    mask (B*repeats, T) of real steps; rows i*repeats ... (i+1)*repeats-1 belong to image i.
    """
    # the image part of the state is computed once per image, then shared by its samples
    state = {k: v.repeat_interleave(repeats, 0) for k, v in decoder.init_state(feats).items()}
    B = feats.size(0) * repeats
    word = torch.full((B,), START, dtype=torch.long, device=feats.device)
    done = torch.zeros(B, dtype=torch.bool, device=feats.device)
    toks, logps, masks = [], [], []
    for t in range(max_len + 1):
        logits, state, _ = decoder.step(word, state)
        logp = (logits.float() / temperature).log_softmax(-1)
        banned = _BANNED + [END] if t < min(max(min_len, 1), max_len) else _BANNED  # at least one word
        logp = logp.index_fill(1, torch.tensor(banned, device=feats.device), float("-inf")).log_softmax(-1)
        probs = logp.exp().detach()  # (B, V)
        if top_p < 1.0:
            sorted_p, order = probs.sort(-1, descending=True)  # (B, V) each
            outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # words after the nucleus is full
            probs = probs.scatter(1, order, sorted_p.masked_fill(outside, 0.0))
        word = torch.multinomial(probs, 1).squeeze(1)  # (B,)
        masks.append(~done)
        chosen = logp.gather(1, word.unsqueeze(1)).squeeze(1)  # (B,)
        logps.append(chosen.masked_fill(done, 0.0))
        word = word.masked_fill(done, PAD)
        toks.append(word)
        done = done | (word == END)
        if done.all():
            break
    mask = torch.stack(masks, 1)  # (B, T)
    return torch.stack(toks, 1), torch.stack(logps, 1), mask
