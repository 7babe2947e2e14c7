"""The WebNLG / DART metrics, equal to GenerationEval `eval.py -m bleu,meteor,chrf++,ter`.

BLEU (multi-bleu-detok, percent) and chrF++ read the raw texts; BLEU NLTK, METEOR and TER read the texts
tokenised by nltk's word_tokenize and joined by blanks. Every instance has the same number N of reference slots;
an empty slot is a missing reference and is handled as each original metric handles it.
Scales follow the script: BLEU in percent, the others as fractions.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from typing import Sequence

import nltk

from .bleu import multi_bleu_detok, nltk_bleu
from .chrf import chrf_plus_plus
from .meteor import Meteor
from .ter import instance_ters, mean_ter

METRICS = ("BLEU", "BLEU_NLTK", "METEOR", "TER", "chrF++")


class NltkDataError(RuntimeError):
    """nltk's punkt_tab tokeniser data is not installed."""


def _ensure_punkt() -> None:
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        raise NltkDataError(
            "nltk's punkt_tab data is missing (word_tokenize needs it): run `python -m nltk.downloader punkt_tab` "
            "when online, or set NLTK_DATA to a folder holding tokenizers/punkt_tab (CI: ../shared/nltk_data); "
            f"searched: {', '.join(nltk.data.path)}") from None


@lru_cache(maxsize=None)
def _tokenize(text: str) -> str:
    return " ".join(nltk.word_tokenize(text)) if text.strip() else ""


def word_tokenize_all(texts: Sequence[str]) -> list[str]:
    """' '.join(nltk.word_tokenize(t)) for each text (cached: references repeat a lot)."""
    _ensure_punkt()
    return [_tokenize(t) for t in texts]


def check_groups(refs: Sequence[Sequence[str]]) -> int:
    widths = {len(g) for g in refs}
    if len(widths) != 1:
        raise ValueError(f"every instance needs the same number of reference slots, found {sorted(widths)}")
    return widths.pop()


def score_webnlg(hyps: Sequence[str], refs: Sequence[Sequence[str]], meteor: Meteor | None = None,
                 tokenized: tuple[list[str], list[list[str]]] | None = None) -> dict[str, float]:
    """Scores of one system output against N reference slots per instance (GenerationEval -nr N)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference instances")
    if not hyps:
        raise ValueError("nothing to score")
    check_groups(refs)
    own_meteor = meteor is None
    try:
        if tokenized is None:
            hyps_tok, refs_tok = tokenize_pair(hyps, refs)
        else:
            hyps_tok, refs_tok = tokenized
        # TER, the slowest part, runs in a forked worker while this process and Java do the rest
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
            ter_job = pool.submit(instance_ters, hyps_tok, refs_tok)
            if own_meteor:
                meteor = Meteor(texts=hyps_tok + [r for g in refs_tok for r in g])
            pending = meteor.submit_stats(hyps_tok, refs_tok)
            scores = {
                "BLEU": multi_bleu_detok(hyps, refs),
                "BLEU_NLTK": nltk_bleu(hyps_tok, refs_tok),
                "chrF++": chrf_plus_plus(hyps, refs),
            }
            scores["TER"] = mean_ter(ter_job.result())
        scores["METEOR"] = meteor.corpus_score(pending.wait())
    finally:
        if own_meteor and meteor is not None:
            meteor.close()
    return {k: scores[k] for k in METRICS}


def tokenize_pair(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    hyps_tok = word_tokenize_all(hyps)
    flat = word_tokenize_all([r for g in refs for r in g])
    width = len(refs[0]) if refs else 0
    return hyps_tok, [flat[i:i + width] for i in range(0, len(flat), width)]

