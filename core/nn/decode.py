"""Decoding: greedy, batched beam search and sampling. Tensors in, token ids out; no I/O.

All three ban <pad>, <start> and <unk> as outputs, give every caption at least one word and stop it at <end>.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.base.config import DEFAULT_BEAM, DEFAULT_MAX_LEN, DEFAULT_NO_REPEAT_NGRAM
from core.data.vocabulary import END, PAD, START, UNK

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
def greedy_decode(decoder, feats: torch.Tensor, max_len: int = DEFAULT_MAX_LEN) -> tuple[torch.Tensor, torch.Tensor]:
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


def _ban_repeated_ngrams(logp: torch.Tensor, history: torch.Tensor, n: int) -> None:
    """The no-repeat-n-gram rule, in place: logp (N, V) gets -inf for every word that would repeat an n-gram
    already in its row's history (N, T) of words."""
    if history.size(1) < n:  # no n-gram yet
        return
    windows = history.unfold(1, n, 1)  # (N, T-n+1, n): every n-gram so far
    prefix = history[:, history.size(1) - n + 1:].unsqueeze(1)  # (N, 1, n-1): the words a next one would follow
    rows, at = (windows[..., : n - 1] == prefix).all(-1).nonzero(as_tuple=True)  # n-grams starting the same way
    logp[rows, windows[rows, at, n - 1]] = float("-inf")


@torch.no_grad()
def beam_search(decoder, feats: torch.Tensor, beam_size: int = DEFAULT_BEAM, max_len: int = DEFAULT_MAX_LEN,
                length_penalty: float = 0.7, no_repeat_ngram: int = DEFAULT_NO_REPEAT_NGRAM, min_len: int = 1,
                constraints: list[list[list[int]]] | None = None) -> list[list[Hypothesis]]:
    """feats (B, P, C) -> for each image, `beam_size` hypotheses, best first.

    K live beams per image; each step looks at the 2K best extensions, moves those ending in <end> to
    the image's finished list, and keeps the best K others alive. An image is done once it has K
    finished captions (its rows then leave the batch); if max_len comes first, its live beams are
    returned unfinished.

    `constraints[b]` (optional): for image b, up to a few word sets (e.g. [[cat, cats, kitten]]); the
    caption must contain one word of each set. This is constrained beam search (Anderson et al. 2017):
    every subset of satisfied sets is a state of a small automaton with its own K beams, a word of an
    unmet set moves a beam to the state that includes it, and the answer comes from the state with
    every set met (or, if the model never got there, the one with the most). Without constraints
    there is one state and this is plain beam search.
    """
    if constraints and len({len(c) for c in constraints}) > 1:
        # an image with fewer word sets needs fewer automaton states (2**sets): search each group at its own
        # size, so that images without constraints cost K beams, not K * 2**sets (same captions, less work)
        out: list = [None] * feats.size(0)
        groups: dict[int, list[int]] = {}
        for b, sets in enumerate(constraints):
            groups.setdefault(len(sets), []).append(b)
        for n, idx in groups.items():
            sub = beam_search(decoder, feats[idx], beam_size, max_len, length_penalty, no_repeat_ngram, min_len,
                              [constraints[b] for b in idx] if n else None)
            for b, hyps in zip(idx, sub):
                out[b] = hyps
        return out
    B, K = feats.size(0), beam_size
    dev = feats.device
    n_sets = max((len(c) for c in constraints), default=0) if constraints else 0
    S = 1 << n_sets  # automaton states per image: which constraint sets are met (a bit each)
    R = S * K  # rows (beams) per image
    word_bits = torch.zeros(B, 1, 1, 1, dtype=torch.long, device=dev)  # (B, 1, 1, V) once V is known
    state = {k: v.repeat_interleave(R, 0) for k, v in decoder.init_state(feats).items()}  # (B*R, ...)
    # state tensors the decoder never replaces (the attention's image features) are the same for all R rows of
    # an image, so reordering beams inside an image leaves them as they are: they are not gathered every step
    constant = dict(state)
    tokens = torch.full((B * R, 1), START, dtype=torch.long, device=dev)  # (live*R, t+1)
    scores = torch.full((B, S, K), float("-inf"), device=dev)
    scores[:, 0, 0] = 0.0  # all beams start identical in state "nothing met": keep one so step 1 gives K words
    alpha_hist = None  # (live*R, t, P)
    finished: list[list[Hypothesis]] = [[] for _ in range(B * S)]  # by b * S + state
    full = [(1 << len(constraints[b])) - 1 if constraints else 0 for b in range(B)]  # each image's goal state
    done = [False] * B
    live = list(range(B))  # the images still searched, in row order: row j*R + s*K + k is image live[j]
    state_ids = torch.arange(S, device=dev).view(1, S, 1, 1)  # (1, S, 1, 1)

    for t in range(max_len + 1):
        no_end = t < min(max(min_len, 1), max_len)  # at least min_len words (and always one)
        logp, new_state, alpha = _next_logprobs(decoder, tokens[:, -1], state, first=no_end)  # (L*R, V)
        constant = {k: v for k, v in constant.items() if new_state.get(k) is v}
        state = new_state
        if alpha is not None:
            alpha = alpha.float().unsqueeze(1)  # (L*R, 1, P); fp32 also under bf16 autocast
            alpha_hist = alpha if alpha_hist is None else torch.cat([alpha_hist, alpha], 1)
        if no_repeat_ngram and t + 1 >= no_repeat_ngram:  # before that no n-gram can repeat
            _ban_repeated_ngrams(logp, tokens[:, 1:], no_repeat_ngram)
        L, V = len(live), logp.size(1)
        if t == 0 and n_sets:
            word_bits = torch.zeros(B, V, dtype=torch.long, device=dev)
            for b, sets in enumerate(constraints):
                for j, words in enumerate(sets):
                    word_bits[b, [w for w in words if 0 <= w < V]] |= 1 << j
            word_bits = word_bits.view(B, 1, 1, V)
        cand = scores.unsqueeze(-1) + logp.view(L, S, K, V)  # (L, S, K, V)
        target = state_ids | word_bits  # (L, S, 1|K, V): the state each extension lands in
        rows, words, new_scores = [], [], []
        for s_to in range(S):
            into = cand if S == 1 else cand.masked_fill(target != s_to, float("-inf"))
            top_scores, top_idx = into.view(L, R * V).topk(min(2 * K, R * V), dim=1)  # (L, 2K)
            top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
            for j, b in enumerate(live):
                g = b * S + s_to
                kept = []
                for sc, i in zip(top_scores[j], top_idx[j]):
                    if len(kept) == K:
                        break
                    row, w = j * R + i // V, i % V
                    if sc == float("-inf"):
                        kept.append((row, PAD, sc))  # a dead slot (tiny vocabularies, unreached states)
                    elif w == END or t == max_len:
                        if w != END:
                            continue
                        if len(finished[g]) < K:
                            words_ = tokens[row, 1:].tolist()
                            a = alpha_hist[row, : len(words_)].cpu() if alpha_hist is not None else None
                            finished[g].append(Hypothesis(words_, sc / (len(words_) + 1) ** length_penalty, sc, True, a))
                    else:
                        kept.append((row, w, sc))
                kept += [((j * S + s_to) * K, PAD, float("-inf"))] * (K - len(kept))
                for row, w, sc in kept:
                    rows.append(row), words.append(w), new_scores.append(sc)
        # rows were gathered state by state: put them back in (image, state) order
        order = torch.arange(L * R).view(S, L, K).transpose(0, 1).reshape(-1).tolist()
        rows, words, new_scores = [rows[i] for i in order], [words[i] for i in order], [new_scores[i] for i in order]
        for b in live:
            done[b] = done[b] or len(finished[b * S + full[b]]) >= K
        if all(done) or t == max_len:  # at t == max_len only captions that ended could be taken
            break
        keep = [j for j, b in enumerate(live) if not done[b]]
        if len(keep) < L:  # finished images leave the batch: later steps compute only the images still going
            keep_rows = torch.tensor([j * R + r for j in keep for r in range(R)], device=dev)
            rows, words, new_scores = ([x[j * R:(j + 1) * R] for j in keep] for x in (rows, words, new_scores))
            rows, words, new_scores = sum(rows, []), sum(words, []), sum(new_scores, [])
            constant = {k: v[keep_rows] for k, v in constant.items()}
            if n_sets:
                word_bits = word_bits[keep]
            live = [live[j] for j in keep]
        rows_t = torch.tensor(rows, device=dev)
        tokens = torch.cat([tokens[rows_t], torch.tensor(words, device=dev).view(-1, 1)], 1)  # (live*R, t+2)
        state = {k: constant[k] if k in constant else v[rows_t] for k, v in state.items()}
        if alpha_hist is not None:
            alpha_hist = alpha_hist[rows_t]
        scores = torch.tensor(new_scores, device=dev).view(len(live), S, K)

    results = []
    position = {b: j for j, b in enumerate(live)}
    for b in range(B):
        hyps: list[Hypothesis] = []
        # the goal state first; if the model never met every constraint, the state that met the most
        for s in sorted(range(full[b] + 1), key=lambda s: (s & full[b] != s, -bin(s).count("1"))):
            hyps = list(finished[b * S + s])
            if len(hyps) < K and b in position:  # max_len reached before <end>: return the live beams as they stand
                row0 = position[b] * R + s * K
                for k in range(K):
                    sc = float(scores[position[b], s, k])
                    if sc == float("-inf") or len(hyps) >= K:
                        continue
                    words_ = tokens[row0 + k, 1:].tolist()
                    a = alpha_hist[row0 + k, : len(words_)].cpu() if alpha_hist is not None else None
                    hyps.append(Hypothesis(words_, sc / (len(words_) + 1) ** length_penalty, sc, False, a))
            if hyps:
                break
        results.append(sorted(hyps, key=lambda h: h.score, reverse=True))
    return results


def sample_captions(decoder, feats: torch.Tensor, max_len: int = DEFAULT_MAX_LEN, repeats: int = 1,
                    temperature: float = 1.0,
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
