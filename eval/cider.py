"""CIDEr as the MS-COCO caption scripts' `Cider` computes it (that is CIDEr-D: clipped tf-idf n-gram cosine,
n = 1..4, Gaussian length penalty with sigma 6 on the bigram count, times 10, idf from the references being
scored), on PTB-tokenised text. Written for speed; the arithmetic follows the original step by step."""
from __future__ import annotations

import math
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

    idf: dict[tuple, float] = {}  # log_n - log_df(gram), computed once per distinct n-gram

    def vectorise(cnts: dict[tuple, int]):
        vec = [dict() for _ in range(N)]
        norm = [0.0] * N
        length = 0
        for gram, tf in cnts.items():
            n = len(gram) - 1
            weight = idf.get(gram)
            if weight is None:
                weight = idf[gram] = log_n - log_df(gram)
            value = float(tf) * weight
            vec[n][gram] = value
            norm[n] += pow(value, 2)
            if n == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    penalty_den = 2 * SIGMA ** 2
    scores = []
    # plain floats where the original uses length-4 numpy arrays: the same IEEE operations in the same order
    for h_cnt, group in zip(hyp_counts, ref_counts):
        vec, norm, length = vectorise(h_cnt)
        total = [0.0] * N
        for r_cnt in group:
            vec_r, norm_r, length_r = vectorise(r_cnt)
            delta = float(length - length_r)
            penalty = np.e ** (-(delta ** 2) / penalty_den)
            for n in range(N):
                ref_n = vec_r[n]
                acc = 0.0
                for gram, v in vec[n].items():
                    rv = ref_n.get(gram, 0.0)
                    acc += min(v, rv) * rv
                if norm[n] != 0 and norm_r[n] != 0:
                    acc /= norm[n] * norm_r[n]
                total[n] += acc * penalty
        score = (((total[0] + total[1]) + total[2]) + total[3]) / N  # np.mean of 4 values
        score /= len(group)
        score *= 10.0
        scores.append(score)
    return float(np.mean(np.array(scores)))
