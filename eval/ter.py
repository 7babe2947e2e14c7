"""TER with pyter's semantics (what GenerationEval reports), computed much faster.

pyter's algorithm: repeatedly apply the phrase shift that lowers the word edit distance most -- candidates are,
for every hypothesis position i and reference position j with i != j and equal words, the longest common run
starting there, moved to index j of the hypothesis with the run removed; ties go to the lexicographically
greatest shifted word list -- until no shift helps; TER = (shifts + edit distance) / reference length.
Here the edit distances come from Myers' bit-vector algorithm restarted from the cached state of the unchanged
prefix, which gives the same integers as pyter's table, so every score is identical.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence


def _peq(ref: Sequence[str]) -> dict[str, int]:
    """Bit mask of each word's positions in the reference."""
    peq: dict[str, int] = {}
    for j, word in enumerate(ref):
        peq[word] = peq.get(word, 0) | (1 << j)
    return peq


def _states(words: Sequence[str], peq: dict[str, int], m: int) -> list[tuple[int, int, int]]:
    """Myers' column state (VP, VN, distance) after each prefix of words, the empty prefix included."""
    full, top = (1 << m) - 1, 1 << (m - 1)
    vp, vn, score = full, 0, m
    out = [(vp, vn, score)]
    for word in words:
        eq = peq.get(word, 0)
        xv = eq | vn
        xh = (((eq & vp) + vp) ^ vp) | eq
        hp = vn | (~(xh | vp) & full)
        hn = vp & xh
        if hp & top:
            score += 1
        elif hn & top:
            score -= 1
        hp = ((hp << 1) | 1) & full
        hn = (hn << 1) & full
        vp, vn = hn | (~(xv | hp) & full), hp & xv
        out.append((vp, vn, score))
    return out


def _distance_from(states, start: int, same_from: int, shifted: Sequence[str], peq: dict[str, int], m: int) -> int:
    """Edit distance of `shifted`, which equals the current words before `start` and from `same_from` on.

    Runs Myers' recurrence from the cached state at `start`; once past `same_from` the columns of both word
    lists are compared, and equal columns mean equal distances from there on (the original's)."""
    full, top = (1 << m) - 1, 1 << (m - 1)
    vp, vn, score = states[start]
    final = states[-1][2]
    n = len(shifted)
    for p in range(start, n):
        if p >= same_from:
            cached = states[p]
            if vp == cached[0] and vn == cached[1]:
                return final
        eq = peq.get(shifted[p], 0)
        xv = eq | vn
        xh = (((eq & vp) + vp) ^ vp) | eq
        hp = vn | (~(xh | vp) & full)
        hn = vp & xh
        if hp & top:
            score += 1
        elif hn & top:
            score -= 1
        hp = ((hp << 1) | 1) & full
        hn = (hn << 1) & full
        vp, vn = hn | (~(xv | hp) & full), hp & xv
    return score


def ter(hyp: Sequence[str], ref: Sequence[str]) -> float:
    """TER of one hypothesis against one reference (word lists); ZeroDivisionError for an empty reference,
    like pyter."""
    if not ref:
        raise ZeroDivisionError("empty reference")
    m = len(ref)
    peq = _peq(ref)
    words = list(hyp)
    ref_positions: dict[str, list[int]] = {}
    for j, word in enumerate(ref):
        ref_positions.setdefault(word, []).append(j)
    # shifts keep the bag of words, and no alignment matches more words than the two bags share
    shared = sum((Counter(words) & Counter(ref)).values())
    floor = max(len(words), m) - shared
    shifts = 0
    while True:
        states = _states(words, peq, m)
        current = states[-1][2]
        if current - floor < 1:  # no shift can lower the distance
            return (shifts + current) / len(ref)
        # a shift only happens for a positive gain, so gains below 1 never matter
        best_delta, best_words = 0, None
        n = len(words)
        candidates = []
        for i, word in enumerate(words):
            for j in ref_positions.get(word, ()):
                if i == j:
                    continue
                length = 1
                while i + length < n and j + length < m and words[i + length] == ref[j + length]:
                    length += 1
                # moving a block of L words by d positions changes the distance by at most 2 * min(L, d)
                # and no shift brings the distance below the floor
                candidates.append((min(2 * min(length, abs(i - j)), current - floor), i, j, length))
        # the choice (largest gain, ties to the greatest shifted list) does not depend on the order the candidates
        # are tried in, so the most promising go first and the bound then skips more of the others
        candidates.sort(key=lambda c: -c[0])
        for bound, i, j, length in candidates:
            if bound < max(best_delta, 1):
                break
            rest = words[:i] + words[i + length:]
            shifted = rest[:j] + words[i:i + length] + rest[j:]
            if bound == best_delta and not shifted > best_words:  # at best a tie, and a tie it would lose
                continue
            delta = current - _distance_from(states, min(i, j), max(i, j) + length, shifted, peq, m)
            if delta > best_delta or (delta == best_delta and delta > 0 and shifted > best_words):
                best_delta, best_words = delta, shifted
        if best_words is None:
            return (shifts + current) / len(ref)
        shifts += 1
        words = best_words


def instance_ters(hyps_tok: Sequence[str], refs_tok: Sequence[Sequence[str]]) -> list[float]:
    """Per instance, GenerationEval's TER: the minimum over its references (an empty reference scores 1);
    texts are word_tokenize-d and blank-joined."""
    out = []
    for hyp, group in zip(hyps_tok, refs_tok):
        h = hyp.split()
        bag = Counter(h)
        best = None
        candidates = []
        for ref in group:
            r = ref.split()
            if not (ref and r):
                best = 1 if best is None else min(best, 1)
                continue
            # no alignment matches more words than the bags share, and shifts cost >= 0: a floor on the score
            shared = sum((bag & Counter(r)).values())
            candidates.append(((max(len(h), len(r)) - shared) / len(r), r))
        # the most promising references first; one whose floor cannot beat the best so far is skipped (the
        # minimum is the same number either way)
        for floor, r in sorted(candidates, key=lambda c: c[0]):
            if best is not None and floor >= best:
                continue
            value = ter(h, r)
            best = value if best is None else min(best, value)
        out.append(best)
    return out


def mean_ter(per_instance: Sequence[float]) -> float:
    """The plain mean, summed in instance order like the original."""
    total = 0.0
    for value in per_instance:
        total += value
    return total / len(per_instance)


def generation_eval_ter(hyps_tok: Sequence[str], refs_tok: Sequence[Sequence[str]]) -> float:
    """GenerationEval's corpus TER."""
    return mean_ter(instance_ters(hyps_tok, refs_tok))
