"""The straightforward beam search (a Python loop over every row's n-grams and every image's candidates):
core.nn.decode's implementation before its no-repeat-n-gram rule became tensor work, kept as the oracle that
tests/test_decode.py holds core.nn.decode to (same hypotheses, same scores, same attention) on random tiny models,
so that a change made for speed cannot change a caption unnoticed. Not used by the app."""
from __future__ import annotations

import torch

from core.base.config import DEFAULT_BEAM, DEFAULT_MAX_LEN, DEFAULT_NO_REPEAT_NGRAM
from core.nn.decode import Hypothesis, _next_logprobs
from core.data.vocabulary import END, PAD, START


def _banned_ngram_words(history: list[int], n: int) -> list[int]:
    """Words that would repeat an n-gram already in `history` (the no-repeat-n-gram rule)."""
    if n <= 0 or len(history) < n - 1:
        return []
    prefix = tuple(history[len(history) - n + 1:])
    return [history[i + n - 1] for i in range(len(history) - n + 1) if tuple(history[i:i + n - 1]) == prefix]


@torch.no_grad()
def reference_beam_search(decoder, feats: torch.Tensor, beam_size: int = DEFAULT_BEAM, max_len: int = DEFAULT_MAX_LEN,
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
            sub = reference_beam_search(decoder, feats[idx], beam_size, max_len, length_penalty, no_repeat_ngram, min_len,
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
            for row, h in enumerate(tokens[:, 1:].tolist()):
                banned = _banned_ngram_words(h, no_repeat_ngram)
                if banned:
                    logp[row, banned] = float("-inf")
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
