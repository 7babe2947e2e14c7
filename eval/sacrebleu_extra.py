"""sacreBLEU beside the official BLEU: an extra, clearly labelled figure with its signature.

The paper's BLEU is the official scripts' (E2E: ``measure_scores.py``; WebNLG/DART: ``multi-bleu-detok.perl``),
which is what ``metrics`` holds and what every comparison with the paper uses. Users of other NLG work expect a
sacreBLEU figure with its signature next to it (Post, 2018), so scoring also records sacreBLEU's defaults (13a
tokenisation, mixed case, exponential smoothing) in ``extra``. References per instance may vary (E2E has 1-40 per
MR; WebNLG's empty reference slots): missing slots are passed as ``None``, which sacreBLEU reads as "no reference
here" and signs as ``nrefs:var``; an instance with no reference at all cannot be scored by sacreBLEU and is left
out (counted in ``without_reference``).
"""
from __future__ import annotations

from typing import Sequence

from sacrebleu.metrics import BLEU

LABEL = "sacreBLEU"


def sacrebleu_extra(hypotheses: Sequence[str], reference_groups: Sequence[Sequence[str]]) -> dict:
    """``{"score": corpus BLEU in percent, "signature": sacreBLEU's signature, "instances": scored,
    "without_reference": left out}`` for the instances given."""
    if len(hypotheses) != len(reference_groups):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(reference_groups)} reference groups")
    pairs = [(h, [r for r in group if r and r.strip()]) for h, group in zip(hypotheses, reference_groups)]
    scored = [(h, g) for h, g in pairs if g]
    if not scored:
        raise ValueError("no references to score against")
    width = max(len(g) for _, g in scored)
    streams = [[g[i] if i < len(g) else None for _, g in scored] for i in range(width)]
    bleu = BLEU()
    score = bleu.corpus_score([h for h, _ in scored], streams)
    return {"score": float(score.score), "signature": str(bleu.get_signature()), "instances": len(scored),
            "without_reference": len(pairs) - len(scored)}
