"""Trainable-parameter counts of every method next to the paper's Table 3 figures.

The paper gives a count per row of its GPT-2 table; the size flags that land nearest are listed here (found by
scanning the flag with the paper's formulas), and ``python -m nlg.methods.counts`` prints, for each, the paper's
figure, the formula's count and the exact number of tensors a run trains and saves, built on the meta device
(no memory, no weights needed). ``count_line`` is the one-line summary a run prints.
"""
from __future__ import annotations

import argparse
import sys

from nlg.config import TrainConfig
from nlg.methods import get_method, method_for
from nlg.models import build_random

# (card, method, paper figure) -> the flags whose formula count is nearest to it.
NEAREST_SETTINGS: list[tuple[str, str, float, dict]] = [
    ("gpt2-medium", "ft", 354.92e6, {}),
    ("gpt2-medium", "ft-top2", 25.19e6, {}),
    ("gpt2-medium", "adapter-l", 0.37e6, {"adapter_dim": 6}),
    ("gpt2-medium", "adapter-l", 11.09e6, {"adapter_dim": 224}),
    ("gpt2-medium", "adapter-h", 11.09e6, {"adapter_dim": 112}),
    ("gpt2-medium", "prefix-layer", 0.35e6, {"prefix_len": 14}),
    ("gpt2-medium", "lora", 0.35e6, {"rank": 4}),
    ("gpt2-large", "ft", 774.03e6, {}),
    ("gpt2-large", "adapter-l", 0.88e6, {"adapter_dim": 8}),
    ("gpt2-large", "adapter-l", 23.00e6, {"adapter_dim": 248}),
    ("gpt2-large", "prefix-layer", 0.77e6, {"prefix_len": 17}),
    ("gpt2-large", "lora", 0.77e6, {"rank": 4}),
]
# (card, method) -> the paper's Table 3 figures, in parameters (GPT-2 M / L rows; LoRA r = 4 on q, v), read off
# the rows above so that the paper's figures are written once.
PAPER_FIGURES: dict[tuple[str, str], tuple[float, ...]] = {
    (card, method): tuple(f for c, m, f, _ in NEAREST_SETTINGS if (c, m) == (card, method))
    for card, method, _, _ in NEAREST_SETTINGS
}


def exact_counts(cfg: TrainConfig, model) -> tuple[int, int]:
    """(tensors the optimizer updates, tensors the final adapter file holds) for a model prepared by ``apply``."""
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    saved = sum(t.numel() for t in method_for(cfg).export_state(model).values())
    return trained, saved


def nearest_paper_figure(card: str, method: str, count: int) -> float | None:
    """The paper's figure for this model and method closest to ``count`` (None if the paper has no such row)."""
    figures = PAPER_FIGURES.get((card, method))
    return min(figures, key=lambda f: abs(f - count)) if figures else None


def count_line(cfg: TrainConfig, model) -> str:
    """"method: trains N, saves M, paper formula F (paper Table 3: X.XXM)" for a prepared model."""
    trained, saved = exact_counts(cfg, model)
    formula = method_for(cfg).paper_param_count(cfg, model.config)
    # the paper adapts no embedding: with --wte-rank no paper row is the same setting
    paper = None if cfg.wte_rank else nearest_paper_figure(cfg.model, cfg.method, formula if formula is not None else trained)
    wte = f" + LoRA r={cfg.wte_rank} on wte" if cfg.wte_rank else ""
    text = f"{cfg.method}{wte}: trains {trained:,} parameters, saves {saved:,}"
    if formula is not None:
        text += f"; paper formula {formula:,}"
    if paper is not None:
        text += f" (paper Table 3: {paper / 1e6:.2f}M)"
    return text


def table() -> list[dict]:
    """One row per nearest setting: paper figure, formula count, exact trained and saved counts (meta device)."""
    rows = []
    for card, method, figure, flags in NEAREST_SETTINGS:
        cfg = TrainConfig(model=card, method=method, **flags)
        model = get_method(method).apply(build_random(card, seed=None, device="meta"), cfg)
        trained, saved = exact_counts(cfg, model)
        rows.append({"card": card, "method": method, "flags": flags, "paper": figure,
                     "formula": get_method(method).paper_param_count(cfg, model.config),
                     "trained": trained, "saved": saved})
    return rows


def _flags(flags: dict) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in flags.items()) or "(none)"


def table3_runs(card: str) -> list[tuple[str, str, str]]:
    """(method, run name, trainer flags) for every Table 3 row of ``card``: what scripts/table3.sh runs."""
    runs = []
    for row_card, method, figure, flags in NEAREST_SETTINGS:
        if row_card == card:
            name = f"{method}-{figure / 1e6:.2f}M"
            runs.append((method, name, " ".join(f"--{k.replace('_', '-')} {v}" for k, v in flags.items())))
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nlg.methods.counts", description=__doc__.split("\n")[0])
    parser.add_argument("--settings", metavar="CARD", help="print 'method<TAB>run name<TAB>flags' per Table 3 row")
    args = parser.parse_args(argv)
    if args.settings:
        for method, name, flags in table3_runs(args.settings):
            print(f"{method}\t{name}\t{flags}")
        return 0
    print("| model | method | flags | paper | paper formula | trained | saved |")
    print("|---|---|---|---|---|---|---|")
    for r in table():
        print(f"| {r['card']} | {r['method']} | {_flags(r['flags'])} | {r['paper'] / 1e6:.2f}M | {r['formula']:,} "
              f"| {r['trained']:,} | {r['saved']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
