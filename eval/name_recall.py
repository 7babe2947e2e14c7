"""``python -m eval.name_recall``: does a system write the names its E2E meaning representation gives it, and does
it write names it was never trained on?

E2E's ``name`` and ``near`` slots hold restaurant names that the sentence must repeat. A third of the test records
name a restaurant that the dev split (the CPU Table 3's training data) never names, so a model can only write
those by copying them from its context — the skill a pretrained language model brings and a model trained on the
E2E records alone does not. BLEU hides this (a generic sentence with the wrong name still scores); this counts
it: for every test MR and each of its name slots, whether the slot's value occurs verbatim in the hypothesis,
split by whether any training MR holds that value.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from eval.readers import read_hypotheses
from nlg.decode import group_references, read_formatted

NAME_SLOTS = ("name", "near")


def mr_slots(context: str) -> dict[str, str]:
    """``name : Blue Spice | Type : coffee shop`` -> {"name": "Blue Spice", "Type": "coffee shop"}."""
    slots = {}
    for part in context.split(" | "):
        key, sep, value = part.partition(" : ")
        if sep:
            slots[key.strip()] = value.strip()
    return slots


def trained_names(train_contexts: Iterable[str]) -> set[str]:
    """Every value of a name slot in the training MRs."""
    return {v for c in train_contexts for k, v in mr_slots(c).items() if k in NAME_SLOTS}


@dataclass(frozen=True)
class NameRecall:
    """Name slots written verbatim, over name slots asked for, for names seen in training and for the others."""

    seen_written: int
    seen_total: int
    unseen_written: int
    unseen_total: int

    @staticmethod
    def share(written: int, total: int) -> float | None:
        return written / total if total else None

    @property
    def seen(self) -> float | None:
        return self.share(self.seen_written, self.seen_total)

    @property
    def unseen(self) -> float | None:
        return self.share(self.unseen_written, self.unseen_total)

    def as_dict(self) -> dict:
        return {"seen": self.seen, "unseen": self.unseen, "seen_written": self.seen_written,
                "seen_total": self.seen_total, "unseen_written": self.unseen_written,
                "unseen_total": self.unseen_total}

    def __str__(self) -> str:
        def pct(x):
            return "—" if x is None else f"{100 * x:.1f} %"
        return (f"names written: {pct(self.seen)} of {self.seen_total} seen in training, "
                f"{pct(self.unseen)} of {self.unseen_total} never seen")


def name_recall(contexts: list[str], hypotheses: list[str], known: set[str]) -> NameRecall:
    """Count over (MR, hypothesis) pairs; ``known`` is :func:`trained_names` of the training MRs."""
    if len(contexts) != len(hypotheses):
        raise ValueError(f"{len(contexts)} MRs but {len(hypotheses)} hypotheses")
    counts = [0, 0, 0, 0]  # seen written, seen total, unseen written, unseen total
    for context, hyp in zip(contexts, hypotheses):
        for key, value in mr_slots(context).items():
            if key in NAME_SLOTS:
                at = 0 if value in known else 2
                counts[at] += value in hyp
                counts[at + 1] += 1
    return NameRecall(*counts)


def mr_contexts(formatted: str | Path) -> list[str]:
    """The MRs of a formatted file in nlg.decode's grouping order (one per line of its hypothesis.txt)."""
    return list(group_references(read_formatted(formatted)))


def score_files(train_formatted: str | Path, test_formatted: str | Path, hypothesis_txt: str | Path) -> NameRecall:
    known = trained_names(rec["context"] for _, rec in read_formatted(train_formatted))
    return name_recall(mr_contexts(test_formatted), read_hypotheses(hypothesis_txt), known)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.name_recall", description=__doc__.split("\n\n")[0])
    ap.add_argument("hypothesis", help="hypothesis.txt (one line per test MR, as nlg.decode writes it)")
    ap.add_argument("--train", required=True, help="the training split's formatted JSONL (its MRs are 'seen')")
    ap.add_argument("--test", required=True, help="the test split's formatted JSONL the hypotheses answer")
    args = ap.parse_args(argv)
    try:
        print(score_files(args.train, args.test, args.hypothesis))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
