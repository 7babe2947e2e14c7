"""The E2E NLG Challenge metrics, equal to `measure_scores.py -p`: BLEU, NIST, METEOR, ROUGE_L, CIDEr.

BLEU/NIST run on the raw (stripped) texts with the mteval tokenisation; METEOR, ROUGE_L and CIDEr on
PTB-tokenised, lower-cased texts with punctuation removed. The PTB tokeniser starts first and works while Python
computes BLEU and NIST; METEOR starts beside it and, once the tokens are known, gets the paraphrase entries they
can use and scores while Python computes ROUGE_L and CIDEr.
"""
from __future__ import annotations

from typing import Sequence

from .bleu import e2e_bleu, e2e_tokens
from .cider import cider
from .meteor import Meteor
from .nist import e2e_nist
from .ptb import PTBJob
from .rouge import rouge_l

METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


def score_e2e(hyps: Sequence[str], refs: Sequence[Sequence[str]], meteor: Meteor | None = None) -> dict[str, float]:
    """Scores of one system output; hyps[i] is scored against refs[i] (a non-empty list)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference groups")
    if not hyps:
        raise ValueError("nothing to score")
    if any(not group for group in refs):
        raise ValueError("every instance needs at least one reference")
    hyps = [h.strip() for h in hyps]
    refs = [[r.strip() for r in group] for group in refs]
    own_meteor = meteor is None
    try:
        flat_refs = [r for group in refs for r in group]
        ptb_job = PTBJob(flat_refs + hyps)  # one Java start for both (line by line, so nothing mixes)
        if own_meteor:  # Java starts now; its paraphrase table follows once the tokens are known
            meteor = Meteor(texts_later=True)
        tokens = e2e_tokens(hyps, refs)
        scores = {"BLEU": e2e_bleu(hyps, refs, tokens=tokens), "NIST": e2e_nist(hyps, refs, tokens=tokens)}
        tok_all = ptb_job.result()
        tok_flat, tok_hyps = tok_all[: len(flat_refs)], tok_all[len(flat_refs):]
        tok_refs, pos = [], 0
        for group in refs:
            tok_refs.append(tok_flat[pos:pos + len(group)])
            pos += len(group)
        if own_meteor:
            meteor.provide_texts(tok_hyps + tok_flat)
        pending = meteor.submit_stats(tok_hyps, tok_refs)
        scores["ROUGE_L"] = rouge_l(tok_hyps, tok_refs)
        scores["CIDEr"] = cider(tok_hyps, tok_refs)
        scores["METEOR"] = meteor.corpus_score(pending.wait())
    finally:
        if own_meteor and meteor is not None:
            meteor.close()
    return {k: scores[k] for k in METRICS}
