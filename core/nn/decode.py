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


@dataclass
class _Beams:
    """The live beams of a batched beam search. Each image has R = S*K rows, K beams for each of the S states
    of its constraint automaton: row j*R + s*K + k is beam k of state s of image live[j]."""

    live: list[int]  # the images still searched, in row order
    tokens: torch.Tensor  # (L*R, t+1): <start> and the words so far
    scores: torch.Tensor  # (L, S, K) summed log-probabilities; -inf in a dead slot
    state: dict  # the decoder's state, (L*R, ...) each
    # state tensors the decoder never replaces (the attention's image features) are the same for all R rows of
    # an image, so reordering beams inside an image leaves them as they are: they are not gathered every step
    constant: dict
    word_bits: torch.Tensor | None = None  # (L, 1, 1, V): bit j set for the words of the image's word set j
    alphas: torch.Tensor | None = None  # (L*R, t, P) attention weights, attention models only


def _start_beams(decoder, feats: torch.Tensor, S: int, K: int) -> _Beams:
    """Every image's R = S*K rows at <start>, only the first beam of state 0 ("nothing met") alive: the beams
    start identical, so keeping one of them makes the first step give K different words."""
    B, R, dev = feats.size(0), S * K, feats.device
    state = {k: v.repeat_interleave(R, 0) for k, v in decoder.init_state(feats).items()}  # (B*R, ...)
    tokens = torch.full((B * R, 1), START, dtype=torch.long, device=dev)  # (B*R, 1)
    scores = torch.full((B, S, K), float("-inf"), device=dev)  # (B, S, K)
    scores[:, 0, 0] = 0.0
    return _Beams(list(range(B)), tokens, scores, state, dict(state))


def _word_bits(constraints: list[list[list[int]]], V: int, device) -> torch.Tensor:
    """The automaton's moves: (B, 1, 1, V) where bit j of word w is set if w is in image b's word set j."""
    bits = torch.zeros(len(constraints), V, dtype=torch.long, device=device)  # (B, V)
    for b, sets in enumerate(constraints):
        for j, words in enumerate(sets):
            bits[b, [w for w in words if 0 <= w < V]] |= 1 << j
    return bits.view(-1, 1, 1, V)  # (B, 1, 1, V)


def _word_mask(words: list[list[int]], V: int, device) -> torch.Tensor:
    """Per image, a list of word ids -> (B, V) bool, True at those words."""
    mask = torch.zeros(len(words), V, dtype=torch.bool, device=device)  # (B, V)
    for b, ids in enumerate(words):
        mask[b, [w for w in ids if 0 <= w < V]] = True
    return mask


def _advance(decoder, beams: _Beams, no_end: bool) -> torch.Tensor:
    """One decoder step on every live row's last word -> log-probs (L*R, V); the state and attention move on."""
    logp, state, alpha = _next_logprobs(decoder, beams.tokens[:, -1], beams.state, first=no_end)  # (L*R, V)
    beams.constant = {k: v for k, v in beams.constant.items() if state.get(k) is v}
    beams.state = state
    if alpha is not None:
        alpha = alpha.float().unsqueeze(1)  # (L*R, 1, P); fp32 also under bf16 autocast
        beams.alphas = alpha if beams.alphas is None else torch.cat([beams.alphas, alpha], 1)  # (L*R, t+1, P)
    return logp


def _hypothesis(beams: _Beams, row: int, logprob: float, length_penalty: float, finished: bool) -> Hypothesis:
    """Row `row`'s words as they stand (without <start>), ranked by logprob / (words + 1) ** length_penalty."""
    words = beams.tokens[row, 1:].tolist()
    alphas = beams.alphas[row, : len(words)].cpu() if beams.alphas is not None else None  # (len(words), P)
    return Hypothesis(words, logprob / (len(words) + 1) ** length_penalty, logprob, finished, alphas)


def _best_extensions(beams: _Beams, logp: torch.Tensor) -> list[tuple[list, list]]:
    """For each automaton state, each image's 2K best one-word extensions that land in it (of all its R rows):
    (scores, indices into the image's R*V (row, word) pairs), as lists (L, 2K)."""
    L, S, K = beams.scores.shape
    R, V = S * K, logp.size(1)
    cand = beams.scores.unsqueeze(-1) + logp.view(L, S, K, V)  # (L, S, K, V)
    if S > 1:
        target = torch.arange(S, device=logp.device).view(1, S, 1, 1) | beams.word_bits  # (L, S, 1, V): state reached
    best = []
    for s_to in range(S):
        into = cand if S == 1 else cand.masked_fill(target != s_to, float("-inf"))
        top_scores, top_idx = into.view(L, R * V).topk(min(2 * K, R * V), dim=1)  # (L, 2K)
        best.append((top_scores.tolist(), top_idx.tolist()))
    return best


def _next_beams(beams: _Beams, j: int, s_to: int, top_scores: list, top_idx: list, V: int,
                ended: list[Hypothesis], length_penalty: float, last: bool) -> list[tuple[int, int, float]]:
    """Image live[j]'s extensions into state s_to, best first: those ending in <end> join `ended` (K at most), the
    next K others go on -> K (row, word, score), dead slots (-inf) where there are fewer. `last`: the step at
    max_len, where only a caption that ends can be taken."""
    _, S, K = beams.scores.shape
    kept = []
    for sc, i in zip(top_scores, top_idx):
        if len(kept) == K:
            break
        row, w = j * S * K + i // V, i % V
        if sc == float("-inf"):
            kept.append((row, PAD, sc))  # a dead slot (tiny vocabularies, unreached states)
        elif w == END:
            if len(ended) < K:
                ended.append(_hypothesis(beams, row, sc, length_penalty, finished=True))
        elif not last:
            kept.append((row, w, sc))
    return kept + [((j * S + s_to) * K, PAD, float("-inf"))] * (K - len(kept))


def _pick(beams: _Beams, logp: torch.Tensor, finished: list[list[Hypothesis]], length_penalty: float,
          last: bool) -> list[tuple[int, int, float]]:
    """One step's choice: each (image, state)'s K next beams, image by image and state by state, as (the row
    extended, its new word, its score); captions that end go to finished[b * S + state]."""
    S, V = beams.scores.size(1), logp.size(1)
    best = _best_extensions(beams, logp)
    picked = []
    for j, b in enumerate(beams.live):
        for s_to, (top_scores, top_idx) in enumerate(best):
            picked += _next_beams(beams, j, s_to, top_scores[j], top_idx[j], V, finished[b * S + s_to],
                                  length_penalty, last)
    return picked


def _follow(beams: _Beams, picked: list[tuple[int, int, float]], keep: list[int]) -> None:
    """The beams become the picked extensions (R of them per image); the images not in `keep` (done) leave the
    batch, so that later steps compute only the images still going."""
    L, S, K = beams.scores.shape
    R, dev = S * K, beams.tokens.device
    if len(keep) < L:
        keep_rows = torch.tensor([j * R + r for j in keep for r in range(R)], device=dev)  # (len(keep)*R,)
        picked = [p for j in keep for p in picked[j * R:(j + 1) * R]]
        beams.constant = {k: v[keep_rows] for k, v in beams.constant.items()}
        if beams.word_bits is not None:
            beams.word_bits = beams.word_bits[keep]
        beams.live = [beams.live[j] for j in keep]
    rows = torch.tensor([row for row, _, _ in picked], device=dev)  # (L'*R,)
    words = torch.tensor([w for _, w, _ in picked], device=dev).view(-1, 1)  # (L'*R, 1)
    beams.tokens = torch.cat([beams.tokens[rows], words], 1)  # (L'*R, t+2)
    beams.state = {k: beams.constant[k] if k in beams.constant else v[rows] for k, v in beams.state.items()}
    if beams.alphas is not None:
        beams.alphas = beams.alphas[rows]  # (L'*R, t+1, P)
    beams.scores = torch.tensor([sc for _, _, sc in picked], device=dev).view(len(beams.live), S, K)  # (L', S, K)


def _results(beams: _Beams, finished: list[list[Hypothesis]], goal: list[int],
             length_penalty: float) -> list[list[Hypothesis]]:
    """Each image's hypotheses, best first: its goal state's (every word set met) or, if the model never got
    there, those of the state that met the most; where max_len came before K captions ended, the live beams too,
    unfinished."""
    _, S, K = beams.scores.shape
    position = {b: j for j, b in enumerate(beams.live)}
    results = []
    for b, full in enumerate(goal):
        hyps: list[Hypothesis] = []
        for s in sorted(range(full + 1), key=lambda s: (s & full != s, -bin(s).count("1"))):
            hyps = list(finished[b * S + s])
            if len(hyps) < K and b in position:
                hyps += _unfinished(beams, position[b], s, K - len(hyps), length_penalty)
            if hyps:
                break
        results.append(sorted(hyps, key=lambda h: h.score, reverse=True))
    return results


def _unfinished(beams: _Beams, j: int, s: int, n: int, length_penalty: float) -> list[Hypothesis]:
    """Up to n live beams of image live[j] in state s, as they stand (dead slots skipped)."""
    _, S, K = beams.scores.shape
    hyps = []
    for k in range(K):
        sc = float(beams.scores[j, s, k])
        if sc != float("-inf") and len(hyps) < n:
            hyps.append(_hypothesis(beams, j * S * K + s * K + k, sc, length_penalty, finished=False))
    return hyps


def _by_constraint_count(decoder, feats: torch.Tensor, constraints: list[list[list[int]]],
                         banned: list[list[int]] | None = None, **options) -> list[list[Hypothesis]]:
    """beam_search for each group of images with as many word sets, in the images' order. An image with fewer
    word sets needs fewer automaton states (2**sets): searched at its own size, images without constraints cost
    K beams, not K * 2**sets (same captions, less work)."""
    out: list = [None] * feats.size(0)
    groups: dict[int, list[int]] = {}
    for b, sets in enumerate(constraints):
        groups.setdefault(len(sets), []).append(b)
    for n, idx in groups.items():
        sub = beam_search(decoder, feats[idx], constraints=[constraints[b] for b in idx] if n else None,
                          banned=[banned[b] for b in idx] if banned else None, **options)
        for b, hyps in zip(idx, sub):
            out[b] = hyps
    return out


@torch.no_grad()
def beam_search(decoder, feats: torch.Tensor, beam_size: int = DEFAULT_BEAM, max_len: int = DEFAULT_MAX_LEN,
                length_penalty: float = 0.7, no_repeat_ngram: int = DEFAULT_NO_REPEAT_NGRAM, min_len: int = 1,
                constraints: list[list[list[int]]] | None = None,
                banned: list[list[int]] | None = None) -> list[list[Hypothesis]]:
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

    `banned[b]` (optional): words image b's caption may not use (e.g. person words where the classifier sees
    only a cat); they get log-probability -inf at every step.
    """
    if constraints and len({len(c) for c in constraints}) > 1:
        return _by_constraint_count(decoder, feats, constraints, banned, beam_size=beam_size, max_len=max_len,
                                    length_penalty=length_penalty, no_repeat_ngram=no_repeat_ngram, min_len=min_len)
    B, K = feats.size(0), beam_size
    n_sets = len(constraints[0]) if constraints else 0  # the same for every image here
    S = 1 << n_sets  # automaton states per image: which word sets are met (a bit each)
    beams = _start_beams(decoder, feats, S, K)
    finished: list[list[Hypothesis]] = [[] for _ in range(B * S)]  # by b * S + state
    goal = [(1 << len(constraints[b])) - 1 if constraints else 0 for b in range(B)]  # each image's every-set state
    done = [False] * B
    ban = None  # (B, V) bool: each image's banned words
    for t in range(max_len + 1):
        logp = _advance(decoder, beams, no_end=t < min(max(min_len, 1), max_len))  # (L*R, V); min_len words, >= 1
        if banned and any(banned):
            if ban is None:
                ban = _word_mask(banned, logp.size(1), feats.device)  # (B, V)
            logp.masked_fill_(ban[beams.live].repeat_interleave(S * K, 0), float("-inf"))  # (L*R, V)
        if no_repeat_ngram and t + 1 >= no_repeat_ngram:  # before that no n-gram can repeat
            _ban_repeated_ngrams(logp, beams.tokens[:, 1:], no_repeat_ngram)
        if t == 0 and n_sets:
            beams.word_bits = _word_bits(constraints, logp.size(1), feats.device)  # (B, 1, 1, V)
        picked = _pick(beams, logp, finished, length_penalty, last=t == max_len)
        for b in beams.live:
            done[b] = done[b] or len(finished[b * S + goal[b]]) >= K
        if all(done) or t == max_len:  # at t == max_len only captions that ended could be taken
            break
        _follow(beams, picked, keep=[j for j, b in enumerate(beams.live) if not done[b]])
    return _results(beams, finished, goal, length_penalty)


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
