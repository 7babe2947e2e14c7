"""chrF++ as GenerationEval reports it (Popovic's chrF.py: character n-grams up to 6 without blanks, word
n-grams up to 2 with one leading/trailing punctuation mark split off, beta 2).

Per instance the reference with the best sentence F (first one on ties) contributes its n-gram counts; the
corpus score is the mean over orders of the F of the summed counts. Instances without a non-empty reference are
skipped, as there. Counts are kept per order in Counters of strings, the arithmetic follows the original.
"""
from __future__ import annotations

import string
from collections import Counter
from typing import Sequence

_PUNCT = frozenset(string.punctuation)
_TINY = 1e-16


def _words(text: str) -> list[str]:
    out = []
    for w in text.strip().split():
        if len(w) == 1:
            out.append(w)
        elif w[-1] in _PUNCT:
            out += [w[:-1], w[-1]]
        elif w[0] in _PUNCT:
            out += [w[0], w[1:]]
        else:
            out.append(w)
    return out


def _char_counts(text: str, order: int) -> list[Counter]:
    chars = text.strip().replace(" ", "")
    return [Counter(chars[i:i + n] for i in range(len(chars) - n + 1)) for n in range(1, order + 1)]


def _word_counts(text: str, order: int) -> list[Counter]:
    words = _words(text)
    # a blank never occurs inside a word, so joining with one keeps n-grams distinct
    return [Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1)) for n in range(1, order + 1)]


def _f(match: float, ref_total: float, hyp_total: float, factor: float) -> float:
    prec = match / hyp_total if hyp_total > 0 else _TINY
    rec = match / ref_total if ref_total > 0 else _TINY
    denom = factor * prec + rec
    return (1 + factor) * prec * rec / denom if denom > 0 else _TINY


def _match(ref: Counter, hyp: Counter) -> int:
    if len(hyp) < len(ref):
        return sum(min(c, ref[g]) for g, c in hyp.items() if g in ref)
    return sum(min(c, hyp[g]) for g, c in ref.items() if g in hyp)


def _stats(ref_counts: list[Counter], hyp_counts: list[Counter]) -> list[tuple[int, int, int]]:
    return [(_match(r, h), sum(r.values()), sum(h.values())) for r, h in zip(ref_counts, hyp_counts)]


def _sentence_f(stats: list[tuple[int, int, int]], factor: float) -> float:
    # only orders with at least one match take part, as in the original's sparse dictionaries
    return sum(_f(m, r, h, factor) for m, r, h in stats if m)


def chrf_plus_plus(hyps: Sequence[str], refs: Sequence[Sequence[str]], nworder: int = 2, ncorder: int = 6,
                   beta: float = 2.0) -> float:
    """Corpus chrF++ as a fraction (GenerationEval's `chrf++` before it rounds)."""
    factor = beta ** 2
    norder = float(nworder + ncorder)
    word_tot = [[0.0, 0.0, 0.0] for _ in range(nworder)]
    char_tot = [[0.0, 0.0, 0.0] for _ in range(ncorder)]
    seen = 0
    for hyp, group in zip(hyps, refs):
        kept = [r for r in group if r.strip() != ""]
        if not kept:
            continue
        seen += 1
        hyp_w, hyp_c = _word_counts(hyp, nworder), _char_counts(hyp, ncorder)
        best_f, best = -1.0, None
        for ref in kept:
            w_stats = _stats(_word_counts(ref, nworder), hyp_w)
            c_stats = _stats(_char_counts(ref, ncorder), hyp_c)
            sent_f = (_sentence_f(c_stats, factor) + _sentence_f(w_stats, factor)) / norder
            if sent_f > best_f:
                best_f, best = sent_f, (w_stats, c_stats)
        for totals, stats in ((word_tot, best[0]), (char_tot, best[1])):
            for acc, (m, r, h) in zip(totals, stats):
                acc[0] += m
                acc[1] += r
                acc[2] += h
    if not seen:
        return 0.0
    char_f = sum(_f(m, r, h, factor) for m, r, h in char_tot)
    word_f = sum(_f(m, r, h, factor) for m, r, h in word_tot)
    return (char_f + word_f) / norder
