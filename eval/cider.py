"""CIDEr as the MS-COCO caption scripts' `Cider` computes it (that is CIDEr-D: clipped tf-idf n-gram cosine,
n = 1..4, Gaussian length penalty with sigma 6 on the bigram count, times 10, idf from the references being
scored), on PTB-tokenised text. Written for speed; the arithmetic follows the original step by step."""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

N = 4
SIGMA = 6.0


def _counts(text: str) -> dict[tuple, int]:
    words = text.split()
    counts: dict[tuple, int] = defaultdict(int)
    for k in range(1, N + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


def cider(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    ref_counts = [[_counts(r) for r in group] for group in refs]
    hyp_counts = [_counts(h) for h in hyps]
    doc_freq: dict[tuple, float] = defaultdict(float)
    for group in ref_counts:
        for gram in {g for c in group for g in c}:
            doc_freq[gram] += 1
    log_n = np.log(float(len(ref_counts)))
    log_df_cache: dict[float, float] = {}

    def log_df(gram: tuple) -> float:
        df = max(1.0, doc_freq.get(gram, 0.0))
        if df not in log_df_cache:
            log_df_cache[df] = np.log(df)
        return log_df_cache[df]

    def vectorise(cnts: dict[tuple, int]):
        vec = [dict() for _ in range(N)]
        norm = [0.0] * N
        length = 0
        for gram, tf in cnts.items():
            n = len(gram) - 1
            value = float(tf) * (log_n - log_df(gram))
            vec[n][gram] = value
            norm[n] += pow(value, 2)
            if n == 1:
                length += tf
        return vec, [np.sqrt(x) for x in norm], length

    penalty_den = 2 * SIGMA ** 2
    scores = []
    for h_cnt, group in zip(hyp_counts, ref_counts):
        vec, norm, length = vectorise(h_cnt)
        total = np.array([0.0] * N)
        for r_cnt in group:
            vec_r, norm_r, length_r = vectorise(r_cnt)
            delta = float(length - length_r)
            val = np.array([0.0] * N)
            for n in range(N):
                ref_n = vec_r[n]
                for gram, v in vec[n].items():
                    rv = ref_n.get(gram, 0.0)
                    val[n] += min(v, rv) * rv
                if norm[n] != 0 and norm_r[n] != 0:
                    val[n] /= norm[n] * norm_r[n]
                val[n] *= np.e ** (-(delta ** 2) / penalty_den)
            total += val
        score = np.mean(total)
        score /= len(group)
        score *= 10.0
        scores.append(score)
    return float(np.mean(np.array(scores)))
