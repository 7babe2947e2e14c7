"""Corpus BLEU three ways, each equal to the script the paper's numbers come from.

- `e2e_bleu`: measure_scores.py -p (Python mteval port): case-insensitive, closest reference length (ties:
  shorter), an empty output counts as one empty token, tiny floors instead of zero precisions.
- `multi_bleu_detok`: Moses multi-bleu-detok.perl as GenerationEval runs it: cased, every reference line
  (empty ones too, length 0) competes for the closest length, log(0) taken as -9999999999.
- `nltk_bleu`: GenerationEval's "BLEU NLTK": nltk corpus_bleu with smoothing method 3 on word_tokenize tokens,
  instances without a non-empty reference dropped.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

from .mteval_tok import tokenize_perl, tokenize_py


def ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def max_ref_counts(refs: Sequence[Sequence[str]], n: int) -> dict:
    """For each n-gram, its largest count in any one reference (the clipping ceiling)."""
    merged: dict = {}
    for ref in refs:
        for gram, cnt in ngram_counts(ref, n).items():
            if cnt > merged.get(gram, 0):
                merged[gram] = cnt
    return merged


def e2e_tokens(hyps: Sequence[str], refs: Sequence[Sequence[str]]):
    """Lower-cased mteval tokens of every hypothesis and reference (shared by E2E BLEU and NIST)."""
    def tok(text: str) -> list[str]:
        return [t.lower() for t in tokenize_py(text)]

    return [tok(h) for h in hyps], [[tok(r) for r in group] for group in refs]


def e2e_bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]], max_n: int = 4, tokens=None) -> float:
    """BLEU as the E2E script's Python mteval computes it (a fraction, not a percentage)."""
    hits = [0] * max_n
    cand = [0] * max_n
    ref_len = 0
    for h, rs in zip(*(tokens or e2e_tokens(hyps, refs))):
        for i in range(max_n):
            n = i + 1
            ceiling = max_ref_counts(rs, n)
            hits[i] += sum(min(c, ceiling.get(g, 0)) for g, c in ngram_counts(h, n).items())
            cand[i] += len(h) - i  # may go negative for short outputs, as in the original
        ref_len += len(min(rs, key=lambda r: (abs(len(r) - len(h)), len(r))))
    bp = 1.0
    if cand[0] <= ref_len:
        bp = math.exp(1.0 - ref_len / (float(cand[0]) if cand[0] else 1e-5))
    log_sum = 0.0
    for n_hits, n_len in zip(hits, cand):
        log_sum += math.log(max(n_hits, 1e-15) / max(n_len, 1e-9))
    return bp * math.exp(log_sum / max_n)


def multi_bleu_detok(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """BLEU in percent as multi-bleu-detok.perl computes it, unrounded (the script prints 2 decimals).

    Degenerate inputs the script dies on (no reference words, or no output words) give 0.0.
    """
    correct = [0] * 5
    total: list[int | None] = [None] * 5
    hyp_len = ref_len = 0
    for hyp, group in zip(hyps, refs):
        h = tokenize_perl(hyp)
        rs = [tokenize_perl(r) for r in group]
        closest_diff, closest_len = 9999, 9999
        for r in rs:
            diff = abs(len(h) - len(r))
            if diff < closest_diff:
                closest_diff, closest_len = diff, len(r)
            elif diff == closest_diff and len(r) < closest_len:
                closest_len = len(r)
        hyp_len += len(h)
        ref_len += closest_len
        for n in range(1, 5):
            counts = ngram_counts(h, n)
            if not counts:
                continue
            ceiling = max_ref_counts(rs, n)
            total[n] = (total[n] or 0) + sum(counts.values())
            correct[n] += sum(min(c, ceiling[g]) for g, c in counts.items() if g in ceiling)
    if ref_len == 0 or hyp_len == 0:
        return 0.0
    precisions = [(correct[n] / total[n]) if total[n] else 0.0 for n in range(1, 5)]
    bp = math.exp(1 - ref_len / hyp_len) if hyp_len < ref_len else 1.0
    log_sum = 0.0
    for p in precisions:
        log_sum += math.log(p) if p else -9999999999
    return 100 * (bp * math.exp(log_sum / 4))


def nltk_bleu(hyps_tok: Sequence[str], refs_tok: Sequence[Sequence[str]]) -> float:
    """GenerationEval's BLEU NLTK on already word_tokenize-d, blank-joined texts."""
    list_of_refs, hyp_list = [], []
    for hyp, group in zip(hyps_tok, refs_tok):
        kept = [r for r in group if r.strip() != ""]
        if kept:
            list_of_refs.append([r.split() for r in kept])
            hyp_list.append(hyp.split())
    if not hyp_list:
        return 0.0
    return float(corpus_bleu(list_of_refs, hyp_list, smoothing_function=SmoothingFunction().method3))
