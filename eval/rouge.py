"""ROUGE-L as the MS-COCO caption scripts compute it (beta 1.2, best precision and best recall over the
references, mean over instances), on PTB-tokenised text split on single blanks (an empty text is one empty
token, as there). The LCS length uses a bit-parallel algorithm: same integer, much faster than the table."""
from __future__ import annotations

from typing import Sequence

import numpy as np

BETA = 1.2


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (Allison-Dix / Hyyroe bit-vector recurrence)."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for j, tok in enumerate(b):
        masks[tok] = masks.get(tok, 0) | (1 << j)
    full = (1 << len(b)) - 1
    v = full
    for tok in a:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(b) - v.bit_count()


def rouge_l_instance(hyp: str, refs: Sequence[str]) -> float:
    cand = hyp.split(" ")
    precs, recs = [], []
    for ref in refs:
        toks = ref.split(" ")
        lcs = lcs_length(toks, cand)
        precs.append(lcs / float(len(cand)))
        recs.append(lcs / float(len(toks)))
    p, r = max(precs), max(recs)
    if p != 0 and r != 0:
        return ((1 + BETA ** 2) * p * r) / float(r + BETA ** 2 * p)
    return 0.0


def rouge_l(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    return float(np.mean(np.array([rouge_l_instance(h, rs) for h, rs in zip(hyps, refs)])))
