"""Corpus NIST as the E2E script's Python mteval port computes it (measure_scores.py -p).

Information weights come from all reference n-gram counts of the corpus (0-grams = reference words), the
length penalty uses the mean reference length per instance, matching is case-insensitive, and an empty output
counts as one empty token, all as in the original.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from .bleu import e2e_tokens, max_ref_counts, ngram_counts

BETA = -math.log(0.5) / math.log(1.5) ** 2


def e2e_nist(hyps: Sequence[str], refs: Sequence[Sequence[str]], max_n: int = 5, tokens=None) -> float:
    ref_counts: list[Counter] = [Counter() for _ in range(max_n + 1)]
    hit_lists: list[list[list[tuple]]] = [[] for _ in range(max_n)]
    cand_lens = [0] * max_n
    avg_ref_len = 0.0
    for h, rs in zip(*(tokens or e2e_tokens(hyps, refs))):
        for i in range(max_n):
            n = i + 1
            cand_lens[i] += len(h) - i
            ceiling = max_ref_counts(rs, n)
            hits = []
            for gram, cnt in ngram_counts(h, n).items():
                k = min(cnt, ceiling.get(gram, 0))
                if k:
                    hits.append((gram, k))
            hit_lists[i].append(hits)
            for r in rs:
                ref_counts[n].update(ngram_counts(r, n))
        ref_len_sum = sum(len(r) for r in rs)
        ref_counts[0][()] += ref_len_sum
        avg_ref_len += ref_len_sum / float(len(rs))

    def info(gram: tuple) -> float:
        cnt = ref_counts[len(gram)].get(gram, 0)
        if not cnt:
            return 0.0
        return math.log(ref_counts[len(gram) - 1][gram[:-1]] / float(cnt), 2)

    hit_infos = [0.0] * max_n
    for i in range(max_n):
        for hits in hit_lists[i]:
            hit_infos[i] += sum(info(gram) * k for gram, k in hits)
    nist_sum = sum(hit_info / total if total else 0.0 for hit_info, total in zip(hit_infos, cand_lens))
    ratio = cand_lens[0] / float(avg_ref_len)
    if ratio >= 1:
        penalty = 1.0
    elif ratio <= 0:
        penalty = 0.0
    else:
        penalty = math.exp(-BETA * math.log(ratio) ** 2)
    return penalty * nist_sum
