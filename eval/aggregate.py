"""Mean and spread of one table row over its seeds.

The paper reports each row as a mean over seeds (with a +- for some rows); a row here is several run folders
of the same recipe that differ only in the seed. This module reduces them to per-metric mean / sample std / n,
in the paper's scale (E2E BLEU, METEOR, ROUGE-L in percent), so a table can print "62.00 ± 2.00" straight
from it and a reader can see how much of a difference between rows is seed noise.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

from .paper import ours_in_paper_scale
from .report import METRIC_ORDER, load_run


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation with ddof=1); the std is None for a single value, since one seed says
    nothing about the spread (ddof=0 would print a misleading ± 0)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = math.fsum(values) / len(values)
    if len(values) == 1:
        return mean, None
    var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def summarize(values: Iterable[float | None]) -> dict:
    """{"mean", "std", "n", "values"} over the values that exist (None: a run without that number)."""
    kept = [v for v in values if v is not None]
    if not kept:
        return {"mean": None, "std": None, "n": 0, "values": []}
    mean, std = mean_std(kept)
    return {"mean": mean, "std": std, "n": len(kept), "values": kept}


def run_metrics(run: dict) -> dict[str, float]:
    """One loaded run's metrics in the paper's scale (its dataset decides which ones are percent)."""
    dataset = run.get("dataset") or "e2e"
    return {name: ours_in_paper_scale(dataset, name, value)
            for name, value in (run.get("metrics") or {}).items() if value is not None}


def metric_names(runs: Sequence[dict]) -> list[str]:
    """Metric names found in the runs, in the dataset's usual order, unknown ones after it."""
    found = {name for r in runs for name in run_metrics(r)}
    dataset = next((r["dataset"] for r in runs if r.get("dataset")), "e2e")
    order = METRIC_ORDER.get(dataset, [])
    return [m for m in order if m in found] + sorted(found - set(order))


def aggregate_runs(runs: Sequence[dict]) -> dict[str, dict]:
    """Per-metric {"mean", "std", "n", "values"} over already loaded runs (eval.report.load_run records)."""
    per_run = [run_metrics(r) for r in runs]
    return {name: summarize(m.get(name) for m in per_run) for name in metric_names(runs)}


def aggregate_row(run_dirs: Sequence[str | Path], split: str = "test") -> dict[str, dict]:
    """Per-metric mean / std / n of one row's run folders, read with eval.report.load_run."""
    return aggregate_runs([load_run(d, split) for d in run_dirs])
